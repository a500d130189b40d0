"""Pure-torch voxelization: points -> per-voxel mean features and integer voxel coordinates.

spconv's ``PointToVoxel`` is not used: its ``empty_mean=True`` mean is wrong and its
coordinates come back (z, y, x) without a batch column. Here a voxel is found by ``unique``
on its linear index, up to ``max_points_per_voxel`` points per voxel are kept (in input
order) and averaged with ``index_add_``. Everything is deterministic and runs on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Voxels:
    """Voxelized batch.

    ``features``: (V, F) mean of the kept points' features (x, y, z, intensity, time-lag, ...).
    ``coords``: (V, 4) int32 ``(batch, z, y, x)`` voxel indices, spconv's index order.
    ``num_points``: (V,) int64 points averaged into each voxel (1..max_points_per_voxel).
    ``point_voxel``: (P,) int64 voxel id of each input point, -1 when it was dropped (outside
    the range, beyond ``max_points_per_voxel`` or in a voxel beyond ``max_voxels``).
    ``spatial_shape``: ``(nz, ny, nx)``; ``batch_size``: B.
    """

    features: torch.Tensor
    coords: torch.Tensor
    num_points: torch.Tensor
    point_voxel: torch.Tensor
    spatial_shape: tuple[int, int, int]
    batch_size: int


def voxel_coordinates(
    points: torch.Tensor,
    point_cloud_range: Sequence[float],
    voxel_size: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    """Integer voxel indices of ``points`` (P, 1 + F) whose columns are (batch, x, y, z, ...).

    Returns ``(coords (P, 4) int64 as (batch, z, y, x), inside (P,) bool, (nz, ny, nx))``.
    """
    lo = torch.tensor(point_cloud_range[:3], dtype=points.dtype, device=points.device)
    size = torch.tensor(voxel_size, dtype=points.dtype, device=points.device)
    shape_xyz = [
        round((h - low) / s)
        for low, h, s in zip(point_cloud_range[:3], point_cloud_range[3:], voxel_size, strict=True)
    ]
    ijk = torch.floor((points[:, 1:4] - lo) / size).long()  # (P, 3) x, y, z indices
    limit = torch.tensor(shape_xyz, device=points.device)
    inside = ((ijk >= 0) & (ijk < limit)).all(dim=1)
    coords = torch.stack([points[:, 0].long(), ijk[:, 2], ijk[:, 1], ijk[:, 0]], dim=1)
    nx, ny, nz = shape_xyz
    return coords, inside, (nz, ny, nx)


def voxelize(
    points: torch.Tensor,
    batch_size: int,
    point_cloud_range: Sequence[float],
    voxel_size: Sequence[float],
    max_points_per_voxel: int,
    max_voxels: int,
) -> Voxels:
    """Group points (P, 1 + F) = (batch, x, y, z, features...) into voxels.

    ``max_voxels`` caps voxels per sample; the voxels kept are those whose first point comes
    earliest in the input, as in hard voxelization, so the cap does not favour one region.
    """
    coords, inside, spatial_shape = voxel_coordinates(points, point_cloud_range, voxel_size)
    nz, ny, nx = spatial_shape
    inside &= (coords[:, 0] >= 0) & (coords[:, 0] < batch_size)
    device = points.device
    num_in = points.shape[0]
    point_voxel = torch.full((num_in,), -1, dtype=torch.long, device=device)
    keep_idx = torch.nonzero(inside, as_tuple=False).squeeze(1)
    c = coords[keep_idx]
    linear = ((c[:, 0] * nz + c[:, 1]) * ny + c[:, 2]) * nx + c[:, 3]
    unique_linear, inverse = torch.unique(linear, return_inverse=True)
    num_vox = unique_linear.numel()

    # Rank of each point inside its voxel, in input order: a stable sort groups the voxels.
    order = torch.sort(inverse, stable=True).indices
    sorted_vox = inverse[order]
    first_pos = torch.zeros(num_vox, dtype=torch.long, device=device)
    counts = torch.bincount(inverse, minlength=num_vox)
    first_pos[1:] = torch.cumsum(counts, 0)[:-1]
    rank = torch.empty_like(inverse)
    rank[order] = torch.arange(order.numel(), device=device) - first_pos[sorted_vox]
    kept_point = rank < max_points_per_voxel

    # Cap voxels per sample by the input position of their first point.
    first_point = torch.full((num_vox,), num_in, dtype=torch.long, device=device)
    first_point.scatter_reduce_(0, inverse, keep_idx, reduce="amin")
    vox_batch = unique_linear // (nz * ny * nx)
    by_first = torch.argsort(first_point)  # first points are distinct, so no ties
    # rank of each voxel among the voxels of its own sample, ordered by first point
    sample_sorted = torch.sort(vox_batch[by_first], stable=True)
    per_sample = torch.bincount(vox_batch, minlength=batch_size)
    sample_start = torch.zeros(batch_size, dtype=torch.long, device=device)
    sample_start[1:] = torch.cumsum(per_sample, 0)[:-1]
    vox_rank = torch.empty(num_vox, dtype=torch.long, device=device)
    vox_rank[by_first[sample_sorted.indices]] = (
        torch.arange(num_vox, device=device) - sample_start[sample_sorted.values]
    )
    kept_voxel = vox_rank < max_voxels

    # Renumber the kept voxels 0..V-1 (ascending linear index, so coordinates are sorted).
    new_id = torch.cumsum(kept_voxel.long(), 0) - 1
    point_ok = kept_point & kept_voxel[inverse]
    vid = new_id[inverse[point_ok]]
    num_kept = int(kept_voxel.sum())
    feats = points[keep_idx[point_ok], 1:]
    sums = torch.zeros((num_kept, feats.shape[1]), dtype=points.dtype, device=device)
    sums.index_add_(0, vid, feats)
    num_points = torch.bincount(vid, minlength=num_kept)
    features = sums / num_points.clamp(min=1).unsqueeze(1).to(points.dtype)
    lin = unique_linear[kept_voxel]
    vox_coords = torch.stack(
        [lin // (nz * ny * nx), (lin // (ny * nx)) % nz, (lin // nx) % ny, lin % nx], dim=1
    )
    point_voxel[keep_idx[point_ok]] = vid
    return Voxels(features, vox_coords.int(), num_points, point_voxel, spatial_shape, batch_size)
