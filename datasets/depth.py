"""LiDAR depth maps per camera: points projected into the network input, nearest return per cell.

Computed after augmentation from the augmented points, ``cam2ego`` and ``cam2img``, so each
map lines up with the image the network sees. ``cam2ego`` may include a BEV scale or mirror
(it is ``bev_aug @ cam2ego``), so it is inverted as a general matrix; the depth that comes out
is the camera-frame z of the *original* scene, in metres.
"""

from __future__ import annotations

import numpy as np

MIN_DEPTH = 0.1  # metres; closer returns are the sensor rig itself, not the scene


def affine_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 affine transform (any invertible 3x3 block: rotation, scale, mirror).

    Closed form (adjugate), because LAPACK's ``inv`` on a 4x4 costs milliseconds of thread
    start-up inside busy DataLoader workers.
    """
    a = np.asarray(m, dtype=np.float64)[:3, :3]
    adjugate_t = np.stack([np.cross(a[1], a[2]), np.cross(a[2], a[0]), np.cross(a[0], a[1])])
    det = float(a[0] @ adjugate_t[0])
    out = np.eye(4)
    out[:3, :3] = adjugate_t.T / det
    out[:3, 3] = -out[:3, :3] @ np.asarray(m, dtype=np.float64)[:3, 3]
    return out


def project_points(points: np.ndarray, cam2ego: np.ndarray, cam2img: np.ndarray) -> np.ndarray:
    """``(P, >=3)`` ego points -> ``(P, 3)`` u, v (network-input pixels) and depth (metres).

    ``cam2ego``: 4x4 (possibly with scale/mirror); ``cam2img``: 4x4 intrinsics of the input.
    Points behind the camera get depth <= 0 and meaningless u, v.
    """
    m = cam2img @ affine_inverse(cam2ego)
    x, y, z = (points[:, i].astype(np.float64) for i in range(3))
    # Row by row rather than one (P, 4) @ (4, 4): no BLAS call, no homogeneous copy.
    u, v, depth = (m[r, 0] * x + m[r, 1] * y + m[r, 2] * z + m[r, 3] for r in range(3))
    safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
    return np.stack([u / safe, v / safe, depth], axis=1)


def depth_map(
    points: np.ndarray,
    cam2ego: np.ndarray,
    cam2img: np.ndarray,
    image_hw: tuple[int, int],
    stride: int,
) -> np.ndarray:
    """``(H // stride, W // stride)`` float32 depth: the nearest return per cell, 0 = none.

    A point at pixel ``(u, v)`` of the ``image_hw`` network input falls into cell
    ``(floor(v / stride), floor(u / stride))``.
    """
    out_h, out_w = image_hw[0] // stride, image_hw[1] // stride
    out = np.zeros((out_h, out_w), dtype=np.float32)
    if len(points) == 0:
        return out
    uvd = project_points(points, cam2ego, cam2img)
    col = np.floor(uvd[:, 0] / stride)
    row = np.floor(uvd[:, 1] / stride)
    keep = (uvd[:, 2] > MIN_DEPTH) & (col >= 0) & (col < out_w) & (row >= 0) & (row < out_h)
    if not keep.any():
        return out
    cell = row[keep].astype(np.int64) * out_w + col[keep].astype(np.int64)
    depth = uvd[keep, 2]
    # Sort by cell, then depth: the first entry of each cell is its nearest return.
    order = np.lexsort((depth, cell))
    cells, first = np.unique(cell[order], return_index=True)
    out.reshape(-1)[cells] = depth[order][first]
    return out
