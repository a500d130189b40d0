"""A torch Dataset over any list of :class:`Frame` records, yielding augmented :class:`Sample`.

Dataset-specific reading stays behind the Frame record (paths, calibration, GT in the ego
frame), so nuScenes keyframes, nuScenes sweeps and KITTI frames all load through this class.

Augmentation is drawn from ``numpy.random.default_rng([seed, epoch, index])``: the same frame
in the same epoch gets the same draw whatever the worker count. The epoch comes with the key:
``dataset[(epoch, index)]``, as :class:`bevkd.datasets.sampler.EpochBatches` yields them, so
persistent DataLoader workers (which keep their own copy of the dataset) still draw each
epoch's augmentation. A plain ``dataset[index]`` uses the epoch of :meth:`set_epoch`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np
import torch

from bevkd.datasets import fov
from bevkd.datasets.augment import apply_image_aug, draw_bev_aug, draw_image_aug, intrinsics_4x4
from bevkd.datasets.depth import depth_map
from bevkd.datasets.frame import CameraRecord, Frame, Sample
from bevkd.datasets.loading import describe, load_points, open_camera_image
from bevkd.pipeline.config import Config, DataConfig
from bevkd.pipeline.errors import DataError
from bevkd.pipeline.geometry import transform_boxes, transform_points


class FrameDataset(torch.utils.data.Dataset):
    """Loads frames; ``train=True`` draws random augmentation, ``train=False`` uses none.

    ``cameras``: the camera names to load, in this order (default ``data.cameras``; empty: no
    image is opened, as a LiDAR-only teacher reads its frames); a frame
    without one of them is an error naming the frame and the cameras it has. ``first_number``:
    the number error messages give the first frame (a shard's offset in the whole run).
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        data: DataConfig,
        train: bool = False,
        seed: int = 0,
        cameras: Sequence[str] | None = None,
        with_depth: bool = True,
        first_number: int = 0,
    ) -> None:
        self.frames = list(frames)
        self.with_depth = (
            with_depth  # LiDAR depth maps feed students' depth losses; teachers skip them
        )
        self.data = data
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.cameras = tuple(cameras if cameras is not None else data.cameras)
        # Errors name frame ``first_number + index``: a shard's frames keep their run-wide numbers.
        self.first_number = first_number

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.frames)

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator | None:
        """The augmentation generator of one frame in ``epoch`` (default: :meth:`set_epoch`'s);
        None when not training."""
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng([self.seed, epoch, index]) if self.train else None

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        return self.load(*self.draw(key))

    def draw(
        self, key: int | tuple[int, int]
    ) -> tuple[int, np.ndarray, np.random.Generator | None]:
        """``(index, bev_aug, rng)`` of a key: the frame, its BEV augmentation, and the
        generator its image augmentation is drawn from next (None when not training)."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        rng = self.rng(index, epoch)
        return index, draw_bev_aug(self.data, rng), rng

    def load(
        self,
        index: int,
        bev_aug: np.ndarray,
        rng: np.random.Generator | None = None,
        points: np.ndarray | None = None,
    ) -> Sample:
        """Frame ``index`` moved by the given ``bev_aug`` (4x4), its image augmentation drawn
        from ``rng`` (None: the validation resize and crop). ``__getitem__`` draws both; an
        online teacher reads the student's frame through this with the student's ``bev_aug``
        and no image augmentation, as the store's teachers saw it. ``points``: the frame's
        points already loaded and moved by ``bev_aug`` (not read again)."""
        frame = self.frames[index]
        where = describe(frame, self.first_number + index)
        if points is None:
            points = load_points(frame, self.data.lidar_sweeps, where)
            if self.data.crop_points_to_camera:
                # CMKD's KITTI setting: only points the camera sees (ego frame, before BEV aug).
                from bevkd.datasets.kitti import crop_points_to_camera

                points = crop_points_to_camera(points, frame)
            points = transform_points(points, bev_aug)
        boxes = transform_boxes(frame.boxes, bev_aug) if frame.has_label else np.zeros((0, 9))
        labels = frame.labels if frame.has_label else np.zeros((0,), np.int64)
        # Depth from the keyframe sweep only: earlier sweeps smear moving objects.
        # (one sweep: every point; Waymo's column 4 is the elongation, not a time-lag)
        keyframe = points if self.data.lidar_sweeps == 1 else points[points[:, 4] == 0.0]
        key_points = keyframe if self.with_depth else points[:0]

        images, cam2img, cam2ego, img_aug, depth = [], [], [], [], []
        for camera in self._cameras(frame, where):
            pixels = open_camera_image(camera, where)
            _check_size(camera, pixels.size, where)
            aug = draw_image_aug(pixels.size, self.data, rng)
            intrinsics = aug.matrix @ intrinsics_4x4(camera.cam2img)
            extrinsics = bev_aug @ camera.cam2ego
            images.append(apply_image_aug(pixels, aug))
            cam2img.append(intrinsics)
            cam2ego.append(extrinsics)
            img_aug.append(aug.matrix)
            depth.append(
                depth_map(
                    key_points, extrinsics, intrinsics, self.data.image_size, self.data.depth_stride
                )
                if self.with_depth
                else _no_depth(self.data)
            )
        h, w = self.data.image_size
        if self.data.fov_only and len(boxes):  # a camera student's GT: what its cameras see
            seen = fov.visible(
                boxes[:, :2], np.stack(cam2img), np.stack(cam2ego), [w] * len(cam2img)
            )
            boxes, labels = boxes[seen], labels[seen]
        return Sample(
            token=frame.token,
            index=index,
            has_label=frame.has_label,
            images=torch.from_numpy(_stack(images, (3, h, w))),
            cam2img=_f32(_stack(cam2img, (4, 4))),
            cam2ego=_f32(_stack(cam2ego, (4, 4))),
            img_aug=_f32(_stack(img_aug, (4, 4))),
            bev_aug=_f32(bev_aug),
            points=torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)),
            gt_boxes=_f32(boxes),
            gt_labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
            depth=torch.from_numpy(_stack(depth, _no_depth(self.data).shape)),
            lidar2ego=_f32(frame.lidar2ego),
        )

    def _cameras(self, frame: Frame, where: str) -> list[CameraRecord]:
        by_name = {c.name: c for c in frame.cameras}
        missing = [name for name in self.cameras if name not in by_name]
        if missing:
            raise DataError(
                f"{where}: no camera {', '.join(missing)} (the frame has {', '.join(by_name) or 'none'}); "
                "set data.cameras"
            )
        return [by_name[name] for name in self.cameras]


def _no_depth(data: DataConfig) -> np.ndarray:
    """An all-zero ("no return") depth map, for loaders that asked for none."""
    h, w = data.image_size
    return np.zeros((h // data.depth_stride, w // data.depth_stride), np.float32)


def _stack(arrays: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """``np.stack``, or an empty ``(0, *shape)`` float32 array for a reader of no camera."""
    return np.stack(arrays) if arrays else np.zeros((0, *shape), np.float32)


def _f32(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _check_size(camera: CameraRecord, size: tuple[int, int], where: str) -> None:
    # The intrinsics belong to the recorded size (W, H); another size means the wrong file.
    if camera.width and camera.height and tuple(size) != (camera.width, camera.height):
        raise DataError(
            f"{where}: camera image {camera.image_path} is {size[0]}x{size[1]}, "
            f"but the dataset records {camera.width}x{camera.height}"
        )


def split_name(data: DataConfig, role: str) -> str:
    """The dataset's split name for a role: "train", "val" or "unlabeled"."""
    names = {"train": data.train_split, "val": data.val_split, "unlabeled": data.unlabeled_split}
    if role not in names:
        raise ValueError(f"unknown split role '{role}' (expected train, val or unlabeled)")
    return names[role]


def load_frames(cfg: Config, role: str) -> list[Frame]:
    """Frames of a split role ("train", "val", "unlabeled") of the dataset ``cfg.data`` names.

    nuScenes reads :mod:`bevkd.datasets.nuscenes_index`; KITTI
    :func:`bevkd.datasets.kitti.frames_from_config`; Waymo v2 the split's parquet files
    (:func:`bevkd.datasets.waymo.load_waymo_frames`); each imported only when asked for.
    """
    split = split_name(cfg.data, role)
    if cfg.data.format == "nuscenes":
        from bevkd.datasets.nuscenes_index import load_index

        return load_index(cfg.data).frames(split)
    if cfg.data.format == "kitti":
        kitti = importlib.import_module("bevkd.datasets.kitti")
        frames: list[Frame] = kitti.frames_from_config(cfg, split)
        return frames
    if cfg.data.format == "waymo":
        waymo = importlib.import_module("bevkd.datasets.waymo")
        return list(waymo.load_waymo_frames(cfg.data.root, split, cfg.classes))
    raise DataError(f"unknown data.format '{cfg.data.format}' (expected nuscenes, kitti or waymo)")


def find_frame(
    cfg: Config, token: str, roles: Sequence[str] = ("train", "val", "unlabeled")
) -> Frame:
    """The frame ``token`` of the dataset ``cfg.data`` names, searched in the given split roles."""
    for role in roles:
        for frame in load_frames(cfg, role):
            if frame.token == token:
                return frame
    raise DataError(f"frame {token} is in none of the splits {list(roles)} of {cfg.data.root}")


def build_dataset(cfg: Config, role: str, train: bool | None = None) -> FrameDataset:
    """The dataset of a split role; augmentation on for "train" unless ``train`` says otherwise."""
    frames = load_frames(cfg, role)
    return FrameDataset(
        frames, cfg.data, train=role == "train" if train is None else train, seed=cfg.train.seed
    )
