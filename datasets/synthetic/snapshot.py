"""The world at one instant, in the ego frame, ready for the sensors; and the per-camera
measurements (visible and unoccluded pixels) that visibility and KITTI labels need."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bevkd.datasets.synthetic import camera as cm
from bevkd.datasets.synthetic.appearance import actor_parts
from bevkd.datasets.synthetic.raycast import Hits, Parts
from bevkd.datasets.synthetic.world import SceneWorld
from bevkd.pipeline.geometry import invert_pose

CULL_RANGE = 160.0  # m: objects farther from the ego are not given to the sensors


def planar_pose(x: float, y: float, yaw: float) -> np.ndarray:
    """4x4 transform of a frame at (x, y, 0) with heading ``yaw`` (ego2global)."""
    out = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    out[:2, :2] = [[c, -s], [s, c]]
    out[:2, 3] = (x, y)
    return out


@dataclass(frozen=True)
class Snapshot:
    """``states``: (N, 9) global boxes of all actors; ``parts``: every actor's and background
    box's parts in the ego frame (owner = actor index, background after the actors)."""

    time: float
    ego2global: np.ndarray
    states: np.ndarray
    parts: Parts
    n_actors: int


def snapshot(world: SceneWorld, time: float) -> Snapshot:
    x, y, yaw = world.ego_pose(time)
    ego2global = planar_pose(x, y, yaw)
    states = world.boxes(time)
    parts = actor_parts(world.actors, states, world.background)
    global2ego = invert_pose(ego2global)
    ego_parts = parts.moved(global2ego)
    near = np.hypot(ego_parts.centre[:, 0], ego_parts.centre[:, 1]) < CULL_RANGE
    ego_parts = Parts(
        *(
            getattr(ego_parts, f)[near]
            for f in ("owner", "centre", "half", "yaw", "material", "colour", "reflect")
        )
    )
    return Snapshot(time, ego2global, states, ego_parts, len(world.actors))


@dataclass
class PixelCounts:
    """Per actor, summed over cameras: pixels where it is seen, and pixels it would cover
    with nothing in front of it."""

    visible: dict[int, int] = field(default_factory=dict)
    unoccluded: dict[int, int] = field(default_factory=dict)

    def add(self, hits: Hits, parts: Parts, n_actors: int) -> None:
        mask = cm.instance_mask(hits, parts, n_actors)
        ids, counts = np.unique(mask[mask >= 0], return_counts=True)
        for i, c in zip(ids.tolist(), counts.tolist(), strict=True):
            self.visible[i] = self.visible.get(i, 0) + c
        for owner, (covered, _) in hits.silhouette.items():
            if owner < n_actors:
                self.unoccluded[owner] = self.unoccluded.get(owner, 0) + covered

    def visibility(self, actor: int) -> float:
        total = self.unoccluded.get(actor, 0)
        return self.visible.get(actor, 0) / total if total else 0.0


def visibility_token(fraction: float) -> str:
    """nuScenes visibility level token ("1".."4") of a visible fraction."""
    if fraction <= 0.4:
        return "1"
    if fraction <= 0.6:
        return "2"
    if fraction <= 0.8:
        return "3"
    return "4"
