"""The world model: a scene's road, its ego vehicle, the objects and how they move.

No sensors and no file formats here. Every object's state is an analytic function of time,
so velocities are exact and any timestamp (keyframe or sweep) can be rendered.
All states are in the global frame (x, y on the flat ground, z up, ground at z = 0) as
``(x, y, z, l, w, h, yaw, vx, vy)`` with z the box centre (``h / 2`` above the ground).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bevkd.datasets.synthetic.catalog import KINDS, Kind
from bevkd.datasets.synthetic.road import Road

KEYFRAME_PERIOD = 0.5  # s: annotated samples at 2 Hz, as in nuScenes
ANNOTATION_RANGE = 60.0  # m: objects whose centre is this close to the ego are annotated

# The ego vehicle (a nuScenes-like Renault Zoe): the ego frame's origin is on the ground under
# the rear axle, so its body centre is ahead of the origin.
EGO_SIZE = (4.08, 1.73, 1.56)
EGO_CENTRE_X = 1.3


@dataclass(frozen=True)
class Actor:
    """One object and its motion.

    ``road`` motion (``linear`` False): ``s(t) = s0 + ds_dt * t`` at lateral offset ``d``
    on the scene road, yaw = road heading + ``yaw_offset``. ``linear`` motion: straight line
    from ``p0`` with velocity ``velocity`` and fixed ``yaw_offset`` as absolute yaw.
    ``colours``: (3, 3) RGB of its primary, secondary and tertiary materials.
    """

    kind: str
    size: tuple[float, float, float]  # l, w, h
    s0: float = 0.0
    d: float = 0.0
    ds_dt: float = 0.0
    yaw_offset: float = 0.0
    linear: bool = False
    p0: tuple[float, float] = (0.0, 0.0)
    velocity: tuple[float, float] = (0.0, 0.0)
    parked: bool = False
    colours: np.ndarray = field(default_factory=lambda: np.full((3, 3), 0.5))

    @property
    def spec(self) -> Kind:
        return KINDS[self.kind]

    @property
    def moving(self) -> bool:
        return self.ds_dt != 0.0 or self.velocity != (0.0, 0.0)

    def states(self, road: Road, times: np.ndarray) -> np.ndarray:
        """``(T, 9)`` global boxes at ``times`` (s)."""
        times = np.asarray(times, dtype=np.float64)
        out = np.zeros((len(times), 9))
        out[:, 3:6] = self.size
        out[:, 2] = self.size[2] / 2
        if self.linear:
            out[:, 0] = self.p0[0] + self.velocity[0] * times
            out[:, 1] = self.p0[1] + self.velocity[1] * times
            out[:, 6] = self.yaw_offset
            out[:, 7:9] = self.velocity
            return out
        s = self.s0 + self.ds_dt * times
        xy, heading = road.to_global(s, np.full_like(s, self.d))
        out[:, :2] = xy
        out[:, 6] = _wrap(heading + self.yaw_offset)
        # The centre line moves at ds/dt; a path at offset d moves (1 - k d) times as fast.
        speed = self.ds_dt * (1.0 - road.curvature * self.d)
        out[:, 7] = speed * np.cos(heading)
        out[:, 8] = speed * np.sin(heading)
        return out


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


@dataclass(frozen=True)
class Lighting:
    """Per-scene illumination. Directions are unit vectors in the global frame (toward the
    sun); colours RGB 0..1."""

    sun: np.ndarray
    sun_colour: np.ndarray
    ambient: np.ndarray
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    haze: float  # transmittance over a distance r is exp(-r * haze / 25 m)
    name: str


@dataclass(frozen=True)
class SceneWorld:
    """One scene: road, ego, objects (annotated kinds), background (unannotated static boxes),
    the frame times and the lighting.

    ``frame_times``: (F,) seconds, keyframes and sweeps in time order; ``is_key``: (F,) bool.
    ``background``: (B, 9) global boxes of buildings and poles (never annotated).
    """

    index: int
    seed: int
    road: Road
    ego: Actor
    actors: tuple[Actor, ...]
    background: np.ndarray
    frame_times: np.ndarray
    is_key: np.ndarray
    lighting: Lighting
    ground_seed: int
    description: str

    @property
    def key_times(self) -> np.ndarray:
        return self.frame_times[self.is_key]

    def ego_pose(self, t: float) -> tuple[float, float, float]:
        """(x, y, yaw) of the ego frame's origin at time ``t``."""
        state = self.ego.states(self.road, np.array([t]))[0]
        yaw = state[6]
        # The actor state is the body centre; the ego frame origin is EGO_CENTRE_X behind it.
        x = state[0] - EGO_CENTRE_X * np.cos(yaw)
        y = state[1] - EGO_CENTRE_X * np.sin(yaw)
        return float(x), float(y), float(yaw)

    def boxes(self, t: float) -> np.ndarray:
        """``(N, 9)`` global states of every actor at time ``t``."""
        times = np.array([t])
        if not self.actors:
            return np.zeros((0, 9))
        return np.concatenate([a.states(self.road, times) for a in self.actors])

    def annotated(self, t: float) -> np.ndarray:
        """Indices of the actors annotated at time ``t`` (centre within the range)."""
        boxes = self.boxes(t)
        x, y, _ = self.ego_pose(t)
        dist = np.hypot(boxes[:, 0] - x, boxes[:, 1] - y)
        return np.flatnonzero(dist <= ANNOTATION_RANGE)


def frame_schedule(keyframes: int, sweeps_between: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame times (s) and keyframe flags: ``sweeps_between`` evenly spaced sweeps before
    the first keyframe and between consecutive keyframes (none after the last)."""
    step = KEYFRAME_PERIOD / (sweeps_between + 1)
    times, keys = [], []
    for k in range(keyframes):
        for j in range(sweeps_between, 0, -1):
            times.append(k * KEYFRAME_PERIOD - j * step)
            keys.append(False)
        times.append(k * KEYFRAME_PERIOD)
        keys.append(True)
    # Round to whole microseconds, the resolution of nuScenes timestamps.
    return np.round(np.array(times) * 1e6) / 1e6, np.array(keys, dtype=bool)
