"""Building a scene: the road, the ego's drive, and objects placed where they belong
(traffic in lanes, parked cars at the curb, pedestrians on sidewalks, construction zones),
rejected when their footprint would touch another object or the ego at any frame time.
"""

from __future__ import annotations

import numpy as np

from bevkd.datasets.synthetic import road as rd
from bevkd.datasets.synthetic import spawners as sp
from bevkd.datasets.synthetic.world import EGO_SIZE, Actor, Lighting, SceneWorld, frame_schedule

MARGIN = 0.25  # m of free space kept around every footprint
SPAWN_MARGIN = 70.0  # m of road before and after the ego's drive that gets objects


def _corners(states: np.ndarray, margin: float) -> np.ndarray:
    """``(..., 9)`` boxes -> ``(..., 4, 2)`` footprint corners grown by ``margin``."""
    half_l = states[..., 3] / 2 + margin
    half_w = states[..., 4] / 2 + margin
    c, s = np.cos(states[..., 6]), np.sin(states[..., 6])
    sx = np.array([1, -1, -1, 1])
    sy = np.array([1, 1, -1, -1])
    lx = half_l[..., None] * sx
    ly = half_w[..., None] * sy
    x = states[..., 0, None] + lx * c[..., None] - ly * s[..., None]
    y = states[..., 1, None] + lx * s[..., None] + ly * c[..., None]
    return np.stack([x, y], axis=-1)


def _overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Separating-axis test of convex quads ``(..., 4, 2)`` (broadcast): True where they touch."""
    separated = np.zeros(np.broadcast_shapes(a.shape, b.shape)[:-2], dtype=bool)
    for quad in (a, b):
        for edge in (quad[..., 1, :] - quad[..., 0, :], quad[..., 3, :] - quad[..., 0, :]):
            pa = np.einsum("...kc,...c->...k", a, edge)
            pb = np.einsum("...kc,...c->...k", b, edge)
            separated |= (pa.max(-1) < pb.min(-1)) | (pb.max(-1) < pa.min(-1))
    return ~separated


class _Occupancy:
    """Footprints of everything placed so far, at every frame time, for rejection tests."""

    def __init__(self, road: rd.Road, times: np.ndarray) -> None:
        self.road = road
        self.times = times
        self.count = 0
        self.quads = np.zeros((64, len(times), 4, 2))
        self.centres = np.zeros((64, len(times), 2))
        self.radii = np.zeros(64)

    def add_states(self, states: np.ndarray) -> None:
        if self.count == len(self.radii):  # grow by doubling
            self.quads = np.concatenate([self.quads, np.zeros_like(self.quads)])
            self.centres = np.concatenate([self.centres, np.zeros_like(self.centres)])
            self.radii = np.concatenate([self.radii, np.zeros_like(self.radii)])
        self.quads[self.count] = _corners(states, MARGIN)
        self.centres[self.count] = states[:, :2]
        self.radii[self.count] = np.hypot(states[0, 3], states[0, 4]) / 2 + MARGIN
        self.count += 1

    def fits(self, states: np.ndarray) -> bool:
        n = self.count
        radius = np.hypot(states[0, 3], states[0, 4]) / 2 + MARGIN
        gap = self.centres[:n] - states[None, :, :2]
        near = (gap**2).sum(-1) < (self.radii[:n, None] + radius) ** 2
        rows = np.flatnonzero(near.any(axis=1))
        if len(rows) == 0:
            return True
        return not bool(_overlaps(self.quads[rows], _corners(states, MARGIN)[None]).any())

    def try_add(self, actor: Actor, placed: list[Actor]) -> bool:
        states = actor.states(self.road, self.times)
        if not self.fits(states):
            return False
        self.add_states(states)
        placed.append(actor)
        return True


LIGHTING = {
    "noon": (
        (0.98, 0.95, 0.88),
        (0.42, 0.45, 0.5),
        (0.35, 0.55, 0.9),
        (0.75, 0.85, 0.95),
        0.08,
        (40, 70),
    ),
    "overcast": (
        (0.55, 0.55, 0.57),
        (0.6, 0.6, 0.62),
        (0.6, 0.62, 0.66),
        (0.82, 0.82, 0.84),
        0.18,
        (35, 70),
    ),
    "dusk": (
        (1.0, 0.7, 0.45),
        (0.3, 0.28, 0.35),
        (0.25, 0.3, 0.55),
        (0.95, 0.65, 0.45),
        0.12,
        (8, 20),
    ),
    "morning": (
        (1.0, 0.92, 0.8),
        (0.38, 0.4, 0.46),
        (0.45, 0.62, 0.88),
        (0.88, 0.88, 0.86),
        0.1,
        (18, 40),
    ),
}


def _lighting(rng: np.random.Generator) -> Lighting:
    name = str(rng.choice(list(LIGHTING)))
    sun_c, amb, top, horizon, haze, (el_lo, el_hi) = LIGHTING[name]
    el = np.radians(rng.uniform(el_lo, el_hi))
    az = rng.uniform(-np.pi, np.pi)
    gain = rng.uniform(0.85, 1.15)
    return Lighting(
        sun=np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]),
        sun_colour=np.array(sun_c) * gain,
        ambient=np.array(amb) * gain,
        sky_top=np.array(top),
        sky_horizon=np.array(horizon),
        haze=haze,
        name=name,
    )


def scene_road(seed: int, index: int) -> rd.Road:
    """The road of scene ``index`` (its own random stream, so the map can be drawn cheaply)."""
    rng = np.random.default_rng([seed, index, 5])
    return rd.Road(
        origin=(float(rng.uniform(300, 1700)), float(rng.uniform(300, 1700))),
        heading=float(rng.uniform(-np.pi, np.pi)),
        curvature=0.0 if rng.random() < 0.5 else float(rng.uniform(-1, 1) / 250),
    )


def build_scene(seed: int, index: int, keyframes: int, sweeps_between: int) -> SceneWorld:
    """Scene ``index`` of the world with ``seed``: a deterministic function of its arguments."""
    rng = np.random.default_rng([seed, index, 7])
    times, is_key = frame_schedule(keyframes, sweeps_between)
    road = scene_road(seed, index)
    ego_speed = 0.0 if rng.random() < 0.12 else float(rng.uniform(3.0, 12.0))
    ego_lane = 1 if rng.random() < 0.7 else 2
    ego = Actor("car", EGO_SIZE, s0=0.0, d=rd.lane_centre(ego_lane), ds_dt=ego_speed)
    s_lo = times[0] * ego_speed - SPAWN_MARGIN
    s_hi = times[-1] * ego_speed + SPAWN_MARGIN

    occupancy = _Occupancy(road, times)
    occupancy.add_states(ego.states(road, times))
    background = sp.background(rng, road, s_lo, s_hi)
    for box in background:
        occupancy.add_states(np.repeat(box[None], len(times), axis=0))
    construction = rng.random() < 0.55
    groups = [
        sp.construction_zone(rng, s_lo, s_hi) if construction else [],
        sp.parked(rng, s_lo, s_hi),
        sp.traffic(rng, s_lo, s_hi),
        sp.pedestrians(rng, s_lo, s_hi),
        sp.crossing(rng, road, s_lo, s_hi),
    ]
    actors: list[Actor] = []
    for group in groups:
        for actor in group:
            occupancy.try_add(actor, actors)
    lighting = _lighting(rng)
    shape = "straight road" if road.curvature == 0 else f"curve r={1 / abs(road.curvature):.0f} m"
    description = (
        f"synthetic: {shape}, ego {ego_speed:.1f} m/s in lane {ego_lane}, {lighting.name}"
        + (", construction zone" if construction else "")
    )
    return SceneWorld(
        index=index,
        seed=seed,
        road=road,
        ego=ego,
        actors=tuple(actors),
        background=background,
        frame_times=times,
        is_key=is_key,
        lighting=lighting,
        ground_seed=int(rng.integers(2**31)),
        description=description,
    )
