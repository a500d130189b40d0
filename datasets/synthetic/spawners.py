"""Where objects go: traffic in lanes, parked vehicles at the curb, pedestrians on the
sidewalks and crossing, construction zones, and the unannotated background (buildings,
poles). Each spawner proposes actors along a stretch ``[s_lo, s_hi]`` of the road;
:mod:`placement` keeps those that fit.
"""

from __future__ import annotations

import numpy as np

from bevkd.datasets.synthetic import road as rd
from bevkd.datasets.synthetic.catalog import KINDS
from bevkd.datasets.synthetic.world import Actor

SKIN = np.array([[0.93, 0.76, 0.62], [0.78, 0.57, 0.42], [0.45, 0.3, 0.2], [0.62, 0.45, 0.32]])


def _size(rng: np.random.Generator, kind: str) -> tuple[float, float, float]:
    spec = KINDS[kind]
    factors = 1.0 + np.clip(rng.normal(0.0, 1.0, 3), -2.5, 2.5) * np.array(spec.spread)
    l, w, h = (np.array(spec.size) * factors).round(3)  # noqa: E741
    return float(l), float(w), float(h)


def _colours(rng: np.random.Generator, kind: str) -> np.ndarray:
    palette = np.array(KINDS[kind].palette)
    primary = palette[rng.integers(len(palette))] * rng.uniform(0.85, 1.1) + rng.normal(0, 0.03, 3)
    secondary = palette[rng.integers(len(palette))] * rng.uniform(0.5, 0.9)
    tertiary = (
        SKIN[rng.integers(len(SKIN))]
        if KINDS[kind].detection in ("pedestrian", "bicycle", "motorcycle")
        else (primary * 0.6)
    )
    return np.clip(np.stack([primary, secondary, tertiary]), 0.0, 1.0)


def _choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


TRAFFIC = {"car": 0.74, "van": 0.06, "truck": 0.09, "bus": 0.05, "motorcyclist": 0.06}
PARKED = {"car": 0.76, "van": 0.08, "truck": 0.07, "trailer": 0.06, "construction_vehicle": 0.03}


def construction_zone(rng: np.random.Generator, s_lo: float, s_hi: float) -> list[Actor]:
    """Cones and barriers along one curb, a construction vehicle and workers inside."""
    side = rng.choice([-1.0, 1.0])
    start = rng.uniform(s_lo + 20, s_hi - 60)
    length = rng.uniform(25, 45)
    out: list[Actor] = []
    edge = side * (rd.CARRIAGEWAY - rd.LANE_WIDTH * 0.15)
    for s in np.arange(start, start + length, rng.uniform(3.5, 5.5)):
        out.append(
            Actor(
                "traffic_cone",
                _size(rng, "traffic_cone"),
                s0=s,
                d=edge,
                yaw_offset=rng.uniform(-np.pi, np.pi),
                colours=_colours(rng, "traffic_cone"),
            )
        )
    barrier_d = side * (rd.ROAD_EDGE - rd.PARKING_WIDTH * 0.5)
    for s in np.arange(start + 3, start + length - 3, 2.8):
        out.append(
            Actor(
                "barrier",
                _size(rng, "barrier"),
                s0=s,
                d=barrier_d,
                yaw_offset=np.pi / 2 + rng.normal(0, 0.03),
                colours=_colours(rng, "barrier"),
            )
        )
    out.append(
        Actor(
            "construction_vehicle",
            _size(rng, "construction_vehicle"),
            s0=start + length * 0.5,
            d=side * (rd.CARRIAGEWAY - 1.2),
            yaw_offset=rng.choice([0.0, np.pi]) + rng.normal(0, 0.1),
            parked=True,
            colours=_colours(rng, "construction_vehicle"),
        )
    )
    for _ in range(rng.integers(1, 4)):
        out.append(
            Actor(
                "worker",
                _size(rng, "worker"),
                s0=rng.uniform(start, start + length),
                d=side * rng.uniform(rd.ROAD_EDGE - 1.5, rd.ROAD_EDGE + 1.0),
                yaw_offset=rng.uniform(-np.pi, np.pi),
                colours=_colours(rng, "worker"),
            )
        )
    return out


def traffic(rng: np.random.Generator, s_lo: float, s_hi: float) -> list[Actor]:
    out: list[Actor] = []
    for lane in (1, 2, -1, -2):
        direction = 1.0 if lane > 0 else -1.0
        # One flow speed per lane, so followers rarely run into each other and get rejected.
        lane_speed = rng.uniform(5.0, 13.0)
        for _ in range(rng.poisson((s_hi - s_lo) / 20)):
            kind = _choice(rng, TRAFFIC)
            moving = rng.random() < 0.85
            speed = max(lane_speed + rng.normal(0, 0.7), 2.0) if moving else 0.0
            out.append(
                Actor(
                    kind,
                    _size(rng, kind),
                    s0=rng.uniform(s_lo, s_hi),
                    d=rd.lane_centre(lane) + rng.normal(0, 0.2),
                    ds_dt=direction * speed,
                    yaw_offset=0.0 if direction > 0 else np.pi,
                    colours=_colours(rng, kind),
                )
            )
        # Cyclists keep to the outer edge of the outer lane.
        for _ in range(rng.poisson((s_hi - s_lo) / 120)):
            kind = "cyclist"
            d = np.sign(rd.lane_centre(lane)) * (rd.CARRIAGEWAY - 0.7)
            out.append(
                Actor(
                    kind,
                    _size(rng, kind),
                    s0=rng.uniform(s_lo, s_hi),
                    d=d,
                    ds_dt=direction * rng.uniform(3, 7),
                    yaw_offset=0.0 if direction > 0 else np.pi,
                    colours=_colours(rng, kind),
                )
            )
    return out


def parked(rng: np.random.Generator, s_lo: float, s_hi: float) -> list[Actor]:
    out: list[Actor] = []
    for side in (-1.0, 1.0):
        occupancy = rng.uniform(0.3, 0.9)
        for _ in range(rng.poisson((s_hi - s_lo) / 7.0 * occupancy)):
            kind = _choice(rng, PARKED)
            facing = 0.0 if side < 0 or rng.random() < 0.3 else np.pi
            d = side * (rd.CARRIAGEWAY + rd.PARKING_WIDTH / 2) + rng.normal(0, 0.15)
            out.append(
                Actor(
                    kind,
                    _size(rng, kind),
                    s0=rng.uniform(s_lo, s_hi),
                    d=d,
                    yaw_offset=facing + rng.normal(0, 0.04),
                    parked=True,
                    colours=_colours(rng, kind),
                )
            )
        for _ in range(rng.poisson((s_hi - s_lo) / 45)):
            kind = rng.choice(["bicycle", "motorcycle"])
            out.append(
                Actor(
                    str(kind),
                    _size(rng, str(kind)),
                    s0=rng.uniform(s_lo, s_hi),
                    d=side * (rd.ROAD_EDGE + 0.6),
                    yaw_offset=side * np.pi / 2 + rng.normal(0, 0.2),
                    parked=True,
                    colours=_colours(rng, str(kind)),
                )
            )
        for _ in range(rng.poisson((s_hi - s_lo) / 90)):
            kind = rng.choice(["traffic_cone", "barrier"])
            out.append(
                Actor(
                    str(kind),
                    _size(rng, str(kind)),
                    s0=rng.uniform(s_lo, s_hi),
                    d=side * (rd.ROAD_EDGE - 0.5),
                    yaw_offset=rng.uniform(-np.pi, np.pi),
                    colours=_colours(rng, str(kind)),
                )
            )
    return out


def pedestrians(rng: np.random.Generator, s_lo: float, s_hi: float) -> list[Actor]:
    out: list[Actor] = []
    for side in (-1.0, 1.0):
        for _ in range(rng.poisson((s_hi - s_lo) / 15)):
            kind = _choice(rng, {"pedestrian": 0.9, "child": 0.06, "sitting": 0.04})
            moving = kind != "sitting" and rng.random() < 0.7
            direction = rng.choice([-1.0, 1.0])
            d = side * rng.uniform(rd.ROAD_EDGE + 0.5, rd.SIDEWALK_EDGE - 0.4)
            out.append(
                Actor(
                    kind,
                    _size(rng, kind),
                    s0=rng.uniform(s_lo, s_hi),
                    d=d,
                    ds_dt=direction * rng.uniform(0.8, 1.7) if moving else 0.0,
                    yaw_offset=(0.0 if direction > 0 else np.pi)
                    if moving
                    else rng.uniform(-np.pi, np.pi),
                    colours=_colours(rng, kind),
                )
            )
    return out


def crossing(rng: np.random.Generator, road: rd.Road, s_lo: float, s_hi: float) -> list[Actor]:
    """Pedestrians walking straight across the road."""
    out: list[Actor] = []
    for _ in range(rng.poisson((s_hi - s_lo) / 100)):
        side = rng.choice([-1.0, 1.0])
        xy, heading = road.to_global(
            np.array(rng.uniform(s_lo, s_hi)), np.array(side * rd.ROAD_EDGE)
        )
        yaw = float(heading) - side * np.pi / 2
        speed = rng.uniform(1.0, 1.6)
        out.append(
            Actor(
                "pedestrian",
                _size(rng, "pedestrian"),
                linear=True,
                p0=(float(xy[0]), float(xy[1])),
                velocity=(speed * np.cos(yaw), speed * np.sin(yaw)),
                yaw_offset=yaw,
                colours=_colours(rng, "pedestrian"),
            )
        )
    return out


def background(rng: np.random.Generator, road: rd.Road, s_lo: float, s_hi: float) -> np.ndarray:
    """Buildings behind the sidewalks and street-light poles at the curb: (B, 9) global boxes."""
    boxes = []
    for side in (-1.0, 1.0):
        s = s_lo - 30
        while s < s_hi + 30:
            length = rng.uniform(10, 35)
            depth = rng.uniform(8, 16)
            height = rng.uniform(5, 22)
            d = side * (rd.SIDEWALK_EDGE + 0.3 + depth / 2)
            xy, heading = road.to_global(np.array(s + length / 2), np.array(d))
            boxes.append([xy[0], xy[1], height / 2, length, depth, height, heading, 0, 0])
            s += length + rng.uniform(1.5, 12)
        for s in np.arange(s_lo + rng.uniform(0, 20), s_hi, 28.0):
            xy, heading = road.to_global(np.array(s), np.array(side * (rd.ROAD_EDGE + 0.35)))
            boxes.append([xy[0], xy[1], 3.5, 0.25, 0.25, 7.0, heading, 0, 0])
    return np.array(boxes, dtype=np.float64)
