"""Nearest-hit ray casting against the flat ground and oriented cuboids, vectorised with numpy.

Both sensors are 2D grids of rays from one origin: a camera (rows = image rows, columns =
image columns) and a spinning LiDAR (rows = beams, columns = azimuth steps). Objects are
made of cuboid *parts* (yaw-only rotation, frame z up); each object tests only the rays of
its own window(s) of the grid, which keeps the work proportional to its image footprint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Window = tuple[int, int, int, int]  # row0, row1, col0, col1 (half-open)
# Outward unit normals of the six faces in a part's own frame, by face code 2 * axis + (+side).
FACE_NORMALS = np.array(
    [[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], dtype=np.float64
)


@dataclass(frozen=True)
class Parts:
    """``M`` cuboid parts in one z-up frame. ``owner``: (M,) object index; ``centre``: (M, 3);
    ``half``: (M, 3) half sizes along the part's x, y, z; ``yaw``: (M,); ``material``: (M,)
    material slot ids (see :mod:`appearance`); ``colour``: (M, 3) RGB 0..1; ``reflect``: (M,)
    LiDAR reflectivity 0..1."""

    owner: np.ndarray
    centre: np.ndarray
    half: np.ndarray
    yaw: np.ndarray
    material: np.ndarray
    colour: np.ndarray
    reflect: np.ndarray

    def __len__(self) -> int:
        return len(self.owner)

    def moved(self, a2b: np.ndarray) -> Parts:
        """The parts in frame b, given a 4x4 ``a2b`` whose rotation is about z only."""
        centre = self.centre @ a2b[:3, :3].T + a2b[:3, 3]
        yaw = self.yaw + np.arctan2(a2b[1, 0], a2b[0, 0])
        return Parts(self.owner, centre, self.half, yaw, self.material, self.colour, self.reflect)


@dataclass
class Hits:
    """Nearest hits on a ray grid of shape (H, W). ``t``: ray parameter (inf: no hit);
    ``part``: (H, W) part index, -1 for the ground or nothing; ``silhouette``: per object, the
    number of grid cells its parts cover when nothing else is in the way, and their (row0,
    row1, col0, col1) bounds (inclusive), for objects that cover at least one cell."""

    t: np.ndarray
    part: np.ndarray
    silhouette: dict[int, tuple[int, tuple[int, int, int, int]]]


def slab(
    origin: np.ndarray, dirs: np.ndarray, centre: np.ndarray, half: np.ndarray, yaw: np.ndarray
) -> np.ndarray:
    """Rays vs ``P`` oriented cuboids (slab test in each cuboid's frame).

    ``dirs``: (..., 3) from the one ``origin`` (3,); ``centre``, ``half``: (P, 3); ``yaw``:
    (P,). Returns the entry ``t`` (P, ...), inf where a ray misses.
    """
    dtype = dirs.dtype
    shape = (-1,) + (1,) * (dirs.ndim - 1)
    c, s = np.cos(yaw), np.sin(yaw)
    rel = origin[None] - centre
    o = (rel[:, 0] * c + rel[:, 1] * s, -rel[:, 0] * s + rel[:, 1] * c, rel[:, 2])
    cc, ss = c.astype(dtype).reshape(shape), s.astype(dtype).reshape(shape)
    dx, dy = dirs[None, ..., 0], dirs[None, ..., 1]
    d = (dx * cc + dy * ss, dy * cc - dx * ss, dirs[None, ..., 2])

    def entry_exit(axis: int) -> tuple[np.ndarray, np.ndarray]:
        # Where each ray enters and leaves the slab |x_axis| <= half along one box axis.
        inv = np.reciprocal(d[axis])
        t1 = (-half[:, axis] - o[axis]).astype(dtype).reshape(shape) * inv
        t2 = (half[:, axis] - o[axis]).astype(dtype).reshape(shape) * inv
        return np.minimum(t1, t2), np.maximum(t1, t2, out=t1)

    # Rays parallel to a slab give inf / nan here; callers (cast) silence those warnings once.
    near, far = entry_exit(0)
    for axis in (1, 2):
        lo, hi = entry_exit(axis)
        np.maximum(near, lo, out=near)
        np.minimum(far, hi, out=far)
    miss = (near > far) | (near <= 0) | np.isnan(near)
    near[miss] = np.inf
    return near


def hit_faces(points: np.ndarray, parts: Parts, index: np.ndarray) -> np.ndarray:
    """Face codes ``2 * axis + (outward normal along +axis)`` of hit ``points`` (N, 3) on the
    parts ``index`` (N,): the face is the one the point lies on, i.e. the axis where its
    part-frame coordinate is farthest out relative to the half size."""
    dtype = points.dtype
    # One gather of everything per part: centre, cos, sin, 1 / half sizes.
    table = np.concatenate(
        [parts.centre, np.cos(parts.yaw)[:, None], np.sin(parts.yaw)[:, None], 1.0 / parts.half],
        axis=1,
    ).astype(dtype)
    table = np.take(table, index, axis=0)
    rx = points[:, 0] - table[:, 0]
    ry = points[:, 1] - table[:, 1]
    lx = (rx * table[:, 3] + ry * table[:, 4]) * table[:, 5]
    ly = (ry * table[:, 3] - rx * table[:, 4]) * table[:, 6]
    lz = (points[:, 2] - table[:, 2]) * table[:, 7]
    ax, ay, az = np.abs(lx), np.abs(ly), np.abs(lz)
    axis = np.where((ax >= ay) & (ax >= az), 0, np.where(ay >= az, 1, 2))
    value = np.where(axis == 0, lx, np.where(axis == 1, ly, lz))
    return (2 * axis + (value > 0)).astype(np.int8)


def _owner_hits(
    origin: np.ndarray,
    dirs: np.ndarray,
    parts: Parts,
    items: list[tuple[int, Window]],
    bounds: Window,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit over one object's parts within ``bounds``: (t, part), each (h, w).

    Small objects test all their parts over the whole window in one vectorised call; large
    ones (near the camera) test each part only over its own window.
    """
    R0, R1, C0, C1 = bounds
    area = (R1 - R0) * (C1 - C0)
    own = sum((w[1] - w[0]) * (w[3] - w[2]) for _, w in items)
    ms = np.array([m for m, _ in items])
    if len(items) == 1 or len(items) * area <= own + 3000 * len(items):
        t_all = slab(origin, dirs[R0:R1, C0:C1], parts.centre[ms], parts.half[ms], parts.yaw[ms])
        if len(items) == 1:
            best = t_all[0]
            return best, np.where(np.isfinite(best), ms[0], -1).astype(np.int32)
        arg = t_all.argmin(axis=0)
        best = np.take_along_axis(t_all, arg[None], 0)[0]
        return best, np.where(np.isfinite(best), ms[arg], -1).astype(np.int32)
    best = np.full((R1 - R0, C1 - C0), np.inf, dtype=dirs.dtype)
    best_part = np.full(best.shape, -1, dtype=np.int32)
    for m, (r0, r1, c0, c1) in items:
        tm = slab(
            origin,
            dirs[r0:r1, c0:c1],
            parts.centre[m : m + 1],
            parts.half[m : m + 1],
            parts.yaw[m : m + 1],
        )[0]
        view = (slice(r0 - R0, r1 - R0), slice(c0 - C0, c1 - C0))
        closer = tm < best[view]
        best[view][closer] = tm[closer]
        best_part[view][closer] = m
    return best, best_part


def cast(
    origin: np.ndarray,
    dirs: np.ndarray,
    ground_t: np.ndarray,
    parts: Parts,
    windows: dict[int, list[tuple[int, Window]]],
    silhouettes: bool = True,
) -> Hits:
    """Nearest hits of the ray grid ``dirs`` (H, W, 3) from ``origin`` (3,).

    ``ground_t``: (H, W) ray parameter of the ground hit (inf where the ray misses it).
    ``windows``: object index -> (part index, grid window that may see the part) pairs; parts
    not listed are not tested. An object's parts are first merged over the union of their
    windows, which gives its unoccluded silhouette (recorded with ``silhouettes``), then a
    depth test merges it into the grid. A part may have two windows where its window wraps
    around the grid (LiDAR azimuth); such objects are depth-tested part by part.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return _cast(origin, dirs, ground_t, parts, windows, silhouettes)


def _cast(
    origin: np.ndarray,
    dirs: np.ndarray,
    ground_t: np.ndarray,
    parts: Parts,
    windows: dict[int, list[tuple[int, Window]]],
    silhouettes: bool,
) -> Hits:
    t = ground_t.copy()
    part_of = np.full(t.shape, -1, dtype=np.int32)
    silhouette: dict[int, tuple[int, tuple[int, int, int, int]]] = {}
    for owner, items in windows.items():
        items = [(m, w) for m, w in items if w[1] > w[0] and w[3] > w[2]]
        if not items:
            continue
        if len({m for m, _ in items}) < len(items):
            for m, (r0, r1, c0, c1) in items:
                tm = slab(
                    origin,
                    dirs[r0:r1, c0:c1],
                    parts.centre[m : m + 1],
                    parts.half[m : m + 1],
                    parts.yaw[m : m + 1],
                )[0]
                front = tm < t[r0:r1, c0:c1]
                t[r0:r1, c0:c1][front] = tm[front]
                part_of[r0:r1, c0:c1][front] = m
            continue
        R0 = min(w[0] for _, w in items)
        R1 = max(w[1] for _, w in items)
        C0 = min(w[2] for _, w in items)
        C1 = max(w[3] for _, w in items)
        best, best_part = _owner_hits(origin, dirs, parts, items, (R0, R1, C0, C1))
        if silhouettes:
            seen = np.isfinite(best)
            covered = int(seen.sum())
            if not covered:
                continue
            rows = np.flatnonzero(seen.any(axis=1))
            cols = np.flatnonzero(seen.any(axis=0))
            silhouette[owner] = (
                covered,
                (R0 + int(rows[0]), R0 + int(rows[-1]), C0 + int(cols[0]), C0 + int(cols[-1])),
            )
        front = best < t[R0:R1, C0:C1]
        t[R0:R1, C0:C1][front] = best[front]
        part_of[R0:R1, C0:C1][front] = best_part[front]
    return Hits(t, part_of, silhouette)


def part_face_normals(yaw: np.ndarray) -> np.ndarray:
    """(M, 6, 3) outward normals of every face of parts with yaws ``yaw`` (M,)."""
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    n = FACE_NORMALS[None]
    return np.stack(
        [
            n[..., 0] * c - n[..., 1] * s,
            n[..., 0] * s + n[..., 1] * c,
            np.broadcast_to(n[..., 2], (len(yaw), 6)),
        ],
        axis=-1,
    )


def ground_hits(origin: np.ndarray, dirs: np.ndarray, ground_z: float, max_t: float) -> np.ndarray:
    """Ray parameter (H, W) where each ray meets the plane z = ``ground_z`` (inf: never, or
    beyond ``max_t``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (ground_z - origin[2]) / dirs[..., 2]
    return np.where((dirs[..., 2] < 0) & (t <= max_t), t, np.inf)
