"""Spinning LiDAR simulation: one ray per (beam, azimuth step), nearest hit against the ground
and the objects' parts, then range noise, dropout and a material- and angle-dependent
intensity. Points come out in the sensor frame, in firing order (azimuth, then beam).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevkd.datasets.synthetic import appearance as ap
from bevkd.datasets.synthetic.raycast import (
    Parts,
    Window,
    cast,
    ground_hits,
    hit_faces,
    part_face_normals,
)
from bevkd.datasets.synthetic.road import Road
from bevkd.pipeline.geometry import invert_pose


@dataclass(frozen=True)
class LidarSpec:
    """``elevations``: (B,) beam elevations in degrees (ring index = position in this
    array); ``azimuth_steps`` per revolution; ranges in metres; ``intensity_scale``: 255 for
    nuScenes-style intensities, 1 for KITTI reflectance."""

    elevations: np.ndarray
    azimuth_steps: int
    max_range: float
    min_range: float
    range_noise: float
    dropout: float
    intensity_scale: float

    def directions(self) -> np.ndarray:
        """(B, A, 3) unit ray directions in the sensor frame (x forward, z up)."""
        el = np.radians(self.elevations)[:, None]
        az = (np.arange(self.azimuth_steps) + 0.5) * (2 * np.pi / self.azimuth_steps) - np.pi
        az = az[None, :]
        return np.stack(
            np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)),
            axis=-1,
        )


def hdl32e(azimuth_steps: int = 1084) -> LidarSpec:
    """nuScenes' Velodyne HDL-32E: 32 beams from -30.67 to +10.67 degrees."""
    return LidarSpec(np.linspace(-30.67, 10.67, 32), azimuth_steps, 70.0, 1.0, 0.02, 0.04, 255.0)


def hdl64e(azimuth_steps: int = 1024) -> LidarSpec:
    """KITTI's Velodyne HDL-64E: 64 beams from -24.9 to +2 degrees, denser in the upper block."""
    elevations = np.concatenate([np.linspace(-24.9, -8.87, 32), np.linspace(-8.53, 2.0, 32)])
    return LidarSpec(elevations, azimuth_steps, 80.0, 2.5, 0.02, 0.03, 1.0)


def _windows(parts: Parts, spec: LidarSpec, rows: int) -> dict[int, list[tuple[int, Window]]]:
    """Azimuth windows (all beams) spanning each part as seen from the sensor. ``parts`` are in
    the sensor frame, whose x-y plane the beams sweep; a part never contains the sensor."""
    step = 2 * np.pi / spec.azimuth_steps
    signs = np.array([[sx, sy] for sx in (-1, 1) for sy in (-1, 1)], dtype=np.float64)
    c, s = np.cos(parts.yaw)[:, None], np.sin(parts.yaw)[:, None]
    lx = parts.half[:, None, 0] * signs[None, :, 0]
    ly = parts.half[:, None, 1] * signs[None, :, 1]
    x = parts.centre[:, None, 0] + lx * c - ly * s
    y = parts.centre[:, None, 1] + lx * s + ly * c
    reach = np.hypot(x, y).min(1) <= spec.max_range
    mid = np.arctan2(y.mean(1), x.mean(1))[:, None]
    delta = (np.arctan2(y, x) - mid + np.pi) % (2 * np.pi) - np.pi
    # Two steps of margin: the corners bound the azimuth span of a convex footprint.
    lo = np.floor((mid[:, 0] + delta.min(1) + np.pi) / step).astype(np.int64) - 2
    hi = np.ceil((mid[:, 0] + delta.max(1) + np.pi) / step).astype(np.int64) + 2
    out: dict[int, list[tuple[int, Window]]] = {}
    for m in np.flatnonzero(reach).tolist():
        owner = out.setdefault(int(parts.owner[m]), [])
        if hi[m] - lo[m] >= spec.azimuth_steps:
            owner.append((m, (0, rows, 0, spec.azimuth_steps)))
            continue
        lo_w, hi_w = int(lo[m] % spec.azimuth_steps), int(hi[m] % spec.azimuth_steps)
        if lo_w < hi_w:
            owner.append((m, (0, rows, lo_w, hi_w)))
        else:
            owner.extend([(m, (0, rows, lo_w, spec.azimuth_steps)), (m, (0, rows, 0, hi_w))])
    return out


@dataclass(frozen=True)
class Returns:
    """One sweep as (B, A) grids over (beam, azimuth step) of :meth:`LidarSpec.directions`:
    ``keep`` where there is a return, its ``range`` (m, float64) and ``intensity`` (already
    scaled by ``intensity_scale``); both are 0 where ``keep`` is False."""

    keep: np.ndarray
    range: np.ndarray
    intensity: np.ndarray


def scan_grid(
    spec: LidarSpec,
    lidar2ego: np.ndarray,
    parts: Parts,
    road: Road,
    ego2global: np.ndarray,
    ground_z: float,
    rng: np.random.Generator,
) -> Returns:
    """One sweep as range-image grids. ``parts`` in the ego frame (z up, ground at
    ``ground_z``); ``lidar2ego`` must rotate about z only. Randomness is drawn in firing order
    (azimuth, then beam), so :func:`scan` gives the same points from the same ``rng``."""
    _, dirs, ground_t = _rays(spec, lidar2ego, ground_z)
    origin = lidar2ego[:3, 3].copy()
    windows = _windows(parts.moved(invert_pose(lidar2ego)), spec, len(spec.elevations))
    hits = cast(origin, dirs, ground_t, parts, windows, silhouettes=False)

    t = hits.t.T.reshape(-1)  # firing order: azimuth-major
    part = hits.part.T.reshape(-1)
    d_ego = dirs.transpose(1, 0, 2).reshape(-1, 3)

    keep = np.isfinite(t) & (t <= spec.max_range) & (t >= spec.min_range)
    reflect = np.zeros(len(t))
    cosine = np.zeros(len(t))
    ground = np.flatnonzero(keep & (part < 0))
    ground_dirs = np.take(d_ego, ground, axis=0)
    xy_ego = origin[None, :2] + t[ground, None] * ground_dirs[:, :2]
    xy = xy_ego @ ego2global[:2, :2].T + ego2global[:2, 3]
    reflect[ground] = ap.GROUND_REFLECT[ap.ground_class(road, xy)]
    cosine[ground] = np.abs(ground_dirs[:, 2])
    obj = np.flatnonzero(keep & (part >= 0))
    obj_dirs = np.take(d_ego, obj, axis=0)
    obj_part = part[obj]
    code = obj_part * 6 + hit_faces(origin + t[obj, None] * obj_dirs, parts, obj_part)
    normals = np.take(part_face_normals(parts.yaw).reshape(-1, 3), code, axis=0)
    reflect[obj] = parts.reflect[obj_part]
    cosine[obj] = np.abs(np.einsum("nc,nc->n", normals, obj_dirs))

    # Weak returns (dark, grazing, far) drop out more often than strong ones.
    strength = reflect * (0.3 + 0.7 * cosine) / (1.0 + (t / 60.0) ** 2)
    with np.errstate(invalid="ignore"):
        p_drop = spec.dropout + 0.25 * np.exp(-strength / 0.02)
    keep &= rng.random(len(t)) >= p_drop
    kept = np.flatnonzero(keep)
    ranges = np.zeros(len(t))
    ranges[kept] = t[kept] + rng.normal(0.0, spec.range_noise, len(kept))
    intensity = np.zeros(len(t))
    intensity[kept] = np.clip(
        reflect[kept] * (0.25 + 0.75 * cosine[kept]) * rng.uniform(0.85, 1.15, len(kept)), 0, 1
    )
    if spec.intensity_scale > 1:
        intensity = np.round(intensity * spec.intensity_scale)
    shape = hits.t.shape[::-1]  # (A, B) in firing order, transposed back to (B, A)
    return Returns(keep.reshape(shape).T, ranges.reshape(shape).T, intensity.reshape(shape).T)


def scan(
    spec: LidarSpec,
    lidar2ego: np.ndarray,
    parts: Parts,
    road: Road,
    ego2global: np.ndarray,
    ground_z: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One sweep (see :func:`scan_grid`). Returns (N, 5) float32 points ``x, y, z,
    intensity, ring`` in the sensor frame, in firing order."""
    returns = scan_grid(spec, lidar2ego, parts, road, ego2global, ground_z, rng)
    sensor_dirs = _rays(spec, lidar2ego, ground_z)[0]
    kept = np.flatnonzero(returns.keep.T.reshape(-1))
    ring = np.broadcast_to(np.arange(len(spec.elevations))[:, None], returns.keep.shape)
    points = np.empty((len(kept), 5), dtype=np.float32)
    points[:, :3] = returns.range.T.reshape(-1)[kept, None] * np.take(
        sensor_dirs.transpose(1, 0, 2).reshape(-1, 3), kept, axis=0
    )
    points[:, 3] = returns.intensity.T.reshape(-1)[kept]
    points[:, 4] = ring.T.reshape(-1)[kept]
    return points


_RAYS: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _rays(
    spec: LidarSpec, lidar2ego: np.ndarray, ground_z: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sensor-frame directions (B, A, 3), ego-frame float32 directions and the ground's ray
    parameter (B, A) of a mounted LiDAR; cached, as they are the same every sweep."""
    key = b"".join(
        np.asarray(v, dtype=np.float64).tobytes()
        for v in (spec.elevations, [spec.azimuth_steps, spec.max_range, ground_z], lidar2ego)
    )
    if key not in _RAYS:
        if len(_RAYS) > 8:
            _RAYS.clear()
        sensor_dirs = spec.directions()
        dirs = (sensor_dirs @ lidar2ego[:3, :3].T).astype(np.float32)
        ground_t = ground_hits(lidar2ego[:3, 3], dirs, ground_z, spec.max_range).astype(np.float32)
        _RAYS[key] = (sensor_dirs, dirs, ground_t)
    return _RAYS[key]
