"""FrameDataset on the tiny synthetic nuScenes world: shapes, augmentation bookkeeping, depth."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from nuscenes_copy import private_copy

from bevkd.datasets.augment import apply_image_aug, draw_image_aug, intrinsics_4x4
from bevkd.datasets.dataset import FrameDataset, build_dataset
from bevkd.datasets.depth import depth_map
from bevkd.datasets.frame import Frame, collate
from bevkd.datasets.loading import load_image, load_points
from bevkd.datasets.nuscenes_index import load_index
from bevkd.pipeline.config import Config, DataConfig
from bevkd.pipeline.geometry import transform_boxes, transform_points

H, W, STRIDE = 64, 112, 8


@pytest.fixture(scope="module")
def root(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy: the index these tests write stays out of the shared fixture."""
    return private_copy(tiny_nuscenes, tmp_path_factory.mktemp("nuscenes"))


@pytest.fixture(scope="module")
def data(root: Path) -> DataConfig:
    return DataConfig(root=str(root), image_size=(H, W), depth_stride=STRIDE)


@pytest.fixture(scope="module")
def val_frames(data: DataConfig) -> list[Frame]:
    return load_index(data).frames("val")


def test_validation_sample_is_unaugmented(data: DataConfig, val_frames: list[Frame]) -> None:
    frame = val_frames[0]
    sample = FrameDataset(val_frames, data, train=False)[0]
    k = len(data.cameras)
    assert sample.token == frame.token and sample.has_label
    assert sample.images.shape == (k, 3, H, W) and sample.images.dtype == torch.float32
    assert sample.depth.shape == (k, H // STRIDE, W // STRIDE)
    assert sample.cam2img.shape == sample.cam2ego.shape == sample.img_aug.shape == (k, 4, 4)
    torch.testing.assert_close(sample.bev_aug, torch.eye(4))
    np.testing.assert_allclose(sample.gt_boxes.numpy(), frame.boxes, atol=1e-5)  # yaw in [-pi, pi)
    np.testing.assert_allclose(sample.points.numpy(), load_points(frame), atol=1e-5)
    for i, camera in enumerate(frame.cameras):
        aug = draw_image_aug((camera.width, camera.height), data, rng=None)
        np.testing.assert_allclose(sample.img_aug[i].numpy(), aug.matrix, atol=1e-6)
        np.testing.assert_allclose(
            sample.cam2img[i].numpy(), aug.matrix @ intrinsics_4x4(camera.cam2img), rtol=1e-6
        )
        expected = apply_image_aug(load_image(camera.image_path), aug)
        np.testing.assert_allclose(sample.images[i].numpy(), expected, atol=1e-6)


def test_every_camera_sees_lidar_depth(data: DataConfig, val_frames: list[Frame]) -> None:
    sample = FrameDataset(val_frames, data)[0]
    filled = (sample.depth > 0).flatten(1).float().mean(1)
    assert (filled > 0.05).all(), (
        f"fraction of depth cells with a return per camera: {filled.tolist()}"
    )


def test_train_augmentation_is_recorded_in_the_matrices(
    data: DataConfig, val_frames: list[Frame]
) -> None:
    dataset = FrameDataset(val_frames, data, train=True, seed=3)
    frame = val_frames[1]
    sample = dataset[1]
    bev = sample.bev_aug.double().numpy()
    assert not np.allclose(bev, np.eye(4))
    np.testing.assert_allclose(
        sample.gt_boxes.numpy(), transform_boxes(frame.boxes, bev), atol=1e-4
    )
    np.testing.assert_allclose(
        sample.points.numpy(), transform_points(load_points(frame), bev), atol=1e-4
    )
    for i, camera in enumerate(frame.cameras):
        np.testing.assert_allclose(sample.cam2ego[i].numpy(), bev @ camera.cam2ego, atol=1e-5)
        # The BEV augmentation cancels out of the depth: the map equals the one drawn from the
        # unaugmented scene through the augmented image.
        unaugmented = depth_map(
            load_points(frame), camera.cam2ego, sample.cam2img[i].double().numpy(), (H, W), STRIDE
        )
        np.testing.assert_allclose(sample.depth[i].numpy(), unaugmented, rtol=1e-4)
    assert np.count_nonzero(sample.depth.numpy()) > 0


def test_augmentation_is_deterministic_per_seed_epoch_index(
    data: DataConfig, val_frames: list[Frame]
) -> None:
    a = FrameDataset(val_frames, data, train=True, seed=0)
    b = FrameDataset(val_frames, data, train=True, seed=0)
    first, again = a[2], b[2]
    torch.testing.assert_close(first.images, again.images)
    torch.testing.assert_close(first.bev_aug, again.bev_aug)
    torch.testing.assert_close(first.img_aug, again.img_aug)
    b.set_epoch(1)
    assert not torch.allclose(first.bev_aug, b[2].bev_aug)


def test_multisweep_points_carry_time_lag(data: DataConfig, val_frames: list[Frame]) -> None:
    frame_index = next(i for i, f in enumerate(val_frames) if len(f.sweeps) >= 2)
    one = FrameDataset(val_frames, data)[frame_index]
    three = FrameDataset(val_frames, dataclasses.replace(data, lidar_sweeps=3))[frame_index]
    assert (one.points[:, 4] == 0).all()
    assert len(three.points) > len(one.points)
    lags = three.points[:, 4].unique()
    assert len(lags) == 3 and 0 < lags[1] < lags[2] < 1.0


def test_unlabeled_sweeps_load_without_boxes(data: DataConfig, root: Path) -> None:
    frames = load_index(data).frames("unlabeled")
    sample = FrameDataset(frames, data, train=True)[0]
    assert (
        not sample.has_label and sample.gt_boxes.shape == (0, 9) and sample.gt_labels.shape == (0,)
    )
    assert sample.images.shape[0] == len(data.cameras) and len(sample.points) > 0


def test_build_dataset_from_config_and_collate(root: Path) -> None:
    cfg = Config(data=DataConfig(root=str(root), image_size=(H, W)))
    train = build_dataset(cfg, "train")
    val = build_dataset(cfg, "val")
    assert train.train and not val.train and len(train) > 0 and len(val) > 0
    batch = collate([val[0], val[1]])
    assert batch.images.shape[:2] == (2, len(cfg.data.cameras))
    assert batch.points[:, 0].unique().tolist() == [0.0, 1.0]
    assert len(batch.gt_boxes) == 2
