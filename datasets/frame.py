"""Typed records at the dataset boundary: :class:`Frame` (what a frame *is*, from the index)
and :class:`Sample` (what a frame *yields* after loading and augmentation).

Every dataset (nuScenes, KITTI object, KITTI raw) produces the same records, in the shared
ego/BEV frame of :mod:`bevkd.pipeline.geometry`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self, TypeVar

import numpy as np
import torch


@dataclass(frozen=True)
class CameraRecord:
    """One camera of a frame.

    ``cam2ego``: 4x4, camera (x right, y down, z forward) -> ego.
    ``cam2img``: 3x3 intrinsics of the image file as stored on disk. ``distortion``: OpenCV
    ``k1, k2, p1, p2, k3`` where the dataset records them (Waymo; empty otherwise), which
    bevkd's pinhole projection does not apply.
    """

    name: str
    image_path: str  # absolute path
    cam2ego: np.ndarray
    cam2img: np.ndarray
    width: int
    height: int
    timestamp: int = 0
    distortion: tuple[float, ...] = ()


@dataclass(frozen=True)
class SweepRecord:
    """An earlier LiDAR sweep, for multi-sweep accumulation.

    ``sweep2lidar``: 4x4 from that sweep's sensor frame to the keyframe's LiDAR frame
    (through the two ego poses). ``time_lag`` in seconds (>= 0).
    """

    lidar_path: str
    sweep2lidar: np.ndarray
    time_lag: float


@dataclass(frozen=True)
class Frame:
    """One frame of a dataset, as listed by an index. No pixels or points are loaded.

    ``boxes``: (N, 9) GT in the ego frame (x, y, z, l, w, h, yaw, vx, vy); empty when
    ``has_label`` is False. ``labels``: (N,) class ids into the dataset's class list.
    ``num_lidar_pts``: (N,) LiDAR points inside each box (the devkit's eval filter).
    ``lidar2ego``/``ego2global``: 4x4. ``points_dim``: floats per point in the file
    (5 for nuScenes ``.pcd.bin``, 4 for KITTI ``.bin``).
    """

    token: str
    scene: str
    timestamp: int
    split: str
    has_label: bool
    lidar_path: str
    lidar2ego: np.ndarray
    ego2global: np.ndarray
    cameras: tuple[CameraRecord, ...]
    sweeps: tuple[SweepRecord, ...] = ()
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 9), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    num_lidar_pts: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    points_dim: int = 5
    dataset: str = "nuscenes"


@dataclass
class Sample:
    """A loaded, augmented frame, ready for a model. Shapes for ``K`` cameras:

    - ``images``: (K, 3, H, W) float32, normalised; ``cam2img``: (K, 4, 4) intrinsics of the
      *network input* (after resize/crop/flip); ``cam2ego``: (K, 4, 4) to the augmented ego.
    - ``img_aug``: (K, 4, 4) original-pixels -> network-input-pixels (homogeneous 2D in 3x3
      block), the image-space augmentation, recorded so later stages can undo or reuse it.
    - ``bev_aug``: (4, 4) ego -> augmented ego (flip, rotation, scale). Cached BEV targets
      are transformed with this same matrix.
    - ``points``: (P, 5) x, y, z, intensity, time-lag in the augmented ego frame.
    - ``gt_boxes``: (N, 9) in the augmented ego frame; ``gt_labels``: (N,) int64.
    - ``depth``: (K, H/s, W/s) LiDAR depth per camera (0 = no return), s = depth stride.
    - ``lidar2ego``: (4, 4) the LiDAR sensor's pose in the (unaugmented) ego frame, for
      teachers that run in the sensor's frame (an imported CenterPoint); identity by default.
    """

    token: str
    index: int
    has_label: bool
    images: torch.Tensor
    cam2img: torch.Tensor
    cam2ego: torch.Tensor
    img_aug: torch.Tensor
    bev_aug: torch.Tensor
    points: torch.Tensor
    gt_boxes: torch.Tensor
    gt_labels: torch.Tensor
    depth: torch.Tensor
    lidar2ego: torch.Tensor = dataclasses.field(default_factory=lambda: torch.eye(4))


@dataclass
class Batch:
    """Samples collated for a model: stacked tensors plus per-sample lists for ragged data.

    ``points`` is (sum P, 6) with the batch index in column 0; ``gt_boxes``/``gt_labels``
    are lists of length B. ``lidar2ego``: (B, 4, 4), or (0, 4, 4) when not known (identity).
    """

    tokens: list[str]
    indices: torch.Tensor
    has_label: torch.Tensor
    images: torch.Tensor
    cam2img: torch.Tensor
    cam2ego: torch.Tensor
    img_aug: torch.Tensor
    bev_aug: torch.Tensor
    points: torch.Tensor
    gt_boxes: list[torch.Tensor]
    gt_labels: list[torch.Tensor]
    depth: torch.Tensor
    lidar2ego: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0, 4, 4))

    def sensor_poses(self) -> torch.Tensor:
        """(B, 4, 4) LiDAR frame -> augmented ego frame: ``bev_aug @ lidar2ego``."""
        poses = (
            self.lidar2ego
            if len(self.lidar2ego) == self.size
            else torch.eye(4).expand(self.size, 4, 4)
        )
        return self.bev_aug.to(poses.dtype) @ poses.to(self.bev_aug.device)

    def to(self, device: torch.device | str) -> Self:
        return map_tensors(self, lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> Self:
        """Page-locked copies (what a DataLoader with ``pin_memory=True`` calls), so that
        ``to(device, non_blocking=True)`` overlaps with compute."""
        return map_tensors(self, lambda t: t.pin_memory())

    @property
    def size(self) -> int:
        return len(self.tokens)


T = TypeVar("T")


def map_tensors(obj: T, fn: Callable[[torch.Tensor], torch.Tensor]) -> T:
    """``obj`` with ``fn`` applied to every tensor in it: through dataclass fields, dicts,
    lists and tuples; anything else (tokens, numbers) is kept as it is."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)  # type: ignore[return-value]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        values = {f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)}
        return type(obj)(**values)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}  # type: ignore[return-value]
    if isinstance(obj, list | tuple):
        return type(obj)(map_tensors(v, fn) for v in obj)  # type: ignore[return-value]
    return obj


def collate(samples: list[Sample]) -> Batch:
    """DataLoader ``collate_fn`` for :class:`Sample`."""
    points = [
        torch.cat([torch.full((len(s.points), 1), float(b)), s.points], dim=1)
        for b, s in enumerate(samples)
    ]
    return Batch(
        tokens=[s.token for s in samples],
        indices=torch.tensor([s.index for s in samples], dtype=torch.int64),
        has_label=torch.tensor([s.has_label for s in samples], dtype=torch.bool),
        images=torch.stack([s.images for s in samples]),
        cam2img=torch.stack([s.cam2img for s in samples]),
        cam2ego=torch.stack([s.cam2ego for s in samples]),
        img_aug=torch.stack([s.img_aug for s in samples]),
        bev_aug=torch.stack([s.bev_aug for s in samples]),
        points=torch.cat(points) if points else torch.zeros((0, 6)),
        gt_boxes=[s.gt_boxes for s in samples],
        gt_labels=[s.gt_labels for s in samples],
        depth=torch.stack([s.depth for s in samples]),
        lidar2ego=torch.stack([s.lidar2ego for s in samples]) if samples else torch.zeros(0, 4, 4),
    )
