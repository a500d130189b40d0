"""Augmentation matrices and LiDAR depth maps, checked against the pixels and points they move."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bevkd.datasets.augment import (
    IMAGE_MEAN,
    IMAGE_STD,
    ImageAug,
    apply_image_aug,
    draw_bev_aug,
    draw_image_aug,
    intrinsics_4x4,
)
from bevkd.datasets.depth import depth_map, project_points
from bevkd.pipeline.config import DataConfig
from bevkd.pipeline.geometry import bev_transform, transform_points

DATA = DataConfig(image_size=(64, 96))


def _bright_centroid(chw: np.ndarray) -> np.ndarray:
    """(u, v) centroid of the pixels brighter than mid-grey, in continuous pixel coordinates."""
    raw = chw.transpose(1, 2, 0) * IMAGE_STD + IMAGE_MEAN
    rows, cols = np.nonzero(raw.mean(axis=2) > 0.5)
    return np.array([cols.mean() + 0.5, rows.mean() + 0.5])


@pytest.mark.parametrize("flip", [False, True])
def test_image_matrix_moves_pixels_where_the_warp_puts_them(flip: bool) -> None:
    image = np.zeros((200, 320, 3), np.uint8)
    image[120:130, 200:210] = 255  # a 10x10 square centred at (205, 125)
    aug = ImageAug(src=(320, 200), resized=(160, 100), crop=(30, 36), out=(96, 64), flip=flip)
    out = apply_image_aug(image, aug)
    assert out.shape == (3, 64, 96)
    expected = (aug.matrix[:3, :3] @ np.array([205.0, 125.0, 1.0]))[:2]
    np.testing.assert_allclose(_bright_centroid(out), expected, atol=0.6)


def test_normalisation_lookup_equals_the_arithmetic_and_takes_pil_images() -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)
    plain = ImageAug(src=(150, 90), resized=(120, 72), crop=(10, 8), out=(96, 64), flip=True)
    jittered = dataclasses.replace(plain, photometric=(1.0, 1.0, 1.0))  # arithmetic path
    out = apply_image_aug(image, plain)
    np.testing.assert_array_equal(out, apply_image_aug(Image.fromarray(image), plain))
    # Unit photometric factors leave the pixels as they are, through the float arithmetic.
    np.testing.assert_allclose(out, apply_image_aug(image, jittered), rtol=0, atol=2e-6)
    resized = Image.fromarray(image).resize((120, 72), Image.Resampling.BILINEAR)
    codes = np.asarray(resized.crop((10, 8, 106, 72)).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    expected = (codes.astype(np.float32) * np.float32(1 / 255) - IMAGE_MEAN) * (1 / IMAGE_STD)
    np.testing.assert_array_equal(out, expected.transpose(2, 0, 1))
    with pytest.raises(ValueError, match="150x90"):
        apply_image_aug(image, dataclasses.replace(plain, src=(160, 90)))


def test_validation_draw_is_fixed_and_fits_the_input() -> None:
    wide = dataclasses.replace(DATA, image_size=(48, 96))  # wider than 16:9: the width fits
    aug = draw_image_aug((1600, 900), wide, rng=None)
    assert aug == draw_image_aug((1600, 900), wide, rng=None)
    assert not aug.flip and aug.photometric is None
    assert aug.resized == (96, 54) and aug.crop == (0, 6)  # the crop keeps the bottom rows
    bottom_right = aug.matrix[:3, :3] @ np.array([1600.0, 900.0, 1.0])
    np.testing.assert_allclose(bottom_right[:2], [96.0, 48.0], atol=1e-9)
    # Narrower than 16:9: the height fits and the crop is centred horizontally.
    aug = draw_image_aug((1600, 900), DATA, rng=None)
    assert aug.resized == (114, 64) and aug.crop == (9, 0)


def test_train_draws_are_random_but_reproducible() -> None:
    draws = [draw_image_aug((1600, 900), DATA, np.random.default_rng([0, 0, i])) for i in range(32)]
    again = [draw_image_aug((1600, 900), DATA, np.random.default_rng([0, 0, i])) for i in range(32)]
    assert draws == again
    assert {d.flip for d in draws} == {False, True}
    assert len({d.resized for d in draws}) > 1
    assert all(d.photometric is not None for d in draws)
    no_flip = dataclasses.replace(DATA, image_flip=False, photometric=False)
    assert not any(
        draw_image_aug((1600, 900), no_flip, np.random.default_rng(i)).flip for i in range(16)
    )


def test_augmented_intrinsics_project_where_the_pixel_moved() -> None:
    cam2img = np.array([[500.0, 0, 160], [0, 500.0, 100], [0, 0, 1]])
    aug = ImageAug(src=(320, 200), resized=(160, 100), crop=(30, 36), out=(96, 64), flip=True)
    point = np.array([[1.0, 0.5, 10.0]])  # camera frame
    before = project_points(point, np.eye(4), intrinsics_4x4(cam2img))[0, :2]
    after = project_points(point, np.eye(4), aug.matrix @ intrinsics_4x4(cam2img))[0, :2]
    np.testing.assert_allclose(after, (aug.matrix[:3, :3] @ np.append(before, 1.0))[:2])


def test_bev_aug_is_identity_on_validation_and_bounded_on_train() -> None:
    np.testing.assert_array_equal(draw_bev_aug(DATA, None), np.eye(4))
    for i in range(16):
        m = draw_bev_aug(DATA, np.random.default_rng(i))
        scale = np.sqrt(abs(np.linalg.det(m[:2, :2])))
        assert DATA.bev_scale[0] <= scale <= DATA.bev_scale[1]
        assert m[2, 2] == pytest.approx(scale)
        np.testing.assert_allclose(m[:3, 3], 0.0)


# Depth maps -------------------------------------------------------------------------------

# A camera looking along ego +x (camera z forward = ego x, camera x right = ego -y).
CAM2EGO = np.array([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 1.5], [0, 0, 0, 1]])
CAM2IMG = intrinsics_4x4(np.array([[50.0, 0, 48], [0, 50.0, 32], [0, 0, 1]]))


def test_depth_map_keeps_the_nearest_return_per_cell() -> None:
    points = np.array(
        [
            [10.0, 0.0, 1.5],  # straight ahead: pixel (48, 32) -> cell (4, 6) at stride 8
            [5.0, 0.0, 1.5],  # same cell, nearer: wins
            [-10.0, 0.0, 1.5],  # behind the camera: ignored
            [10.0, -200.0, 1.5],  # far outside the image: ignored
        ]
    )
    depth = depth_map(points, CAM2EGO, CAM2IMG, (64, 96), stride=8)
    assert depth.shape == (8, 12)
    assert depth[4, 6] == pytest.approx(5.0)
    assert np.count_nonzero(depth) == 1


def test_depth_map_is_unchanged_by_a_bev_augmentation() -> None:
    rng = np.random.default_rng(0)
    points = np.column_stack(
        [rng.uniform(2, 30, 500), rng.uniform(-10, 10, 500), rng.uniform(0, 3, 500)]
    )
    base = depth_map(points, CAM2EGO, CAM2IMG, (64, 96), stride=4)
    bev = bev_transform(rotation=0.3, scale=1.05, flip_y=True)
    moved = depth_map(transform_points(points, bev), bev @ CAM2EGO, CAM2IMG, (64, 96), stride=4)
    assert np.count_nonzero(base) > 20
    np.testing.assert_allclose(moved, base, rtol=1e-5)
