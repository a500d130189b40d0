"""A camera student's field of view (data.fov_only): what a camera sees in BEV, the GT boxes it
keeps, and the teacher's cached targets masked to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bevkd.datasets import fov
from bevkd.datasets.cached import CachedTargets
from bevkd.datasets.dataset import FrameDataset
from bevkd.datasets.frame import Sample
from bevkd.datasets.waymo import OPENCV_FROM_WAYMO_CAMERA, load_waymo_frames
from bevkd.pipeline.config import DataConfig
from bevkd.pipeline.geometry import BEVGrid
from bevkd.storage.augment import transform_field
from bevkd.storage.reader import open_store
from bevkd.storage.schema import field_grid
from bevkd.storage.testing import small_contract, write_store

FOCAL, WIDTH = 100.0, 100  # half-angle atan(50 / 100) = 26.57 degrees
HALF_ANGLE = np.arctan2(WIDTH / 2, FOCAL)


def _front_camera(height: float = 1.5, yaw: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(1, 4, 4) intrinsics and (1, 4, 4) camera -> ego of a camera looking along ``yaw``."""
    intrinsics = np.eye(4)
    intrinsics[:3, :3] = [[FOCAL, 0, WIDTH / 2], [0, FOCAL, 40], [0, 0, 1]]
    c, s = np.cos(yaw), np.sin(yaw)
    waymo = np.eye(4)  # Waymo camera axes: x forward, y left, z up
    waymo[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    waymo[:3, 3] = (1.0, 0.0, height)
    return intrinsics[None], (waymo @ OPENCV_FROM_WAYMO_CAMERA.T)[None]


def test_a_camera_sees_its_horizontal_wedge() -> None:
    cam2img, cam2ego = _front_camera()
    inside = np.tan(HALF_ANGLE) * 0.9
    xy = np.array(
        [
            [11.0, 0.0],  # straight ahead
            [11.0, 10 * inside],  # just inside the wedge, left
            [11.0, -10 * inside],  # and right
            [11.0, 10 * np.tan(HALF_ANGLE) * 1.1],  # just outside
            [-9.0, 0.0],  # behind
            [1.2, 0.0],  # ahead but nearer than MIN_DEPTH
            [60.0, 5.0],  # far ahead, whatever the ground height
        ]
    )
    assert fov.visible(xy, cam2img, cam2ego, [WIDTH]).tolist() == [
        True, True, True, False, False, False, True,
    ]  # fmt: skip


def test_two_cameras_see_the_union_of_their_wedges() -> None:
    front = _front_camera()
    back = _front_camera(yaw=np.pi)
    cam2img, cam2ego = np.concatenate([front[0], back[0]]), np.concatenate([front[1], back[1]])
    xy = np.array([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0]])
    assert fov.visible(xy, front[0], front[1], [WIDTH]).tolist() == [True, False, False]
    assert fov.visible(xy, cam2img, cam2ego, [WIDTH, WIDTH]).tolist() == [True, True, False]


def test_the_cell_mask_is_the_wedge_on_the_grid() -> None:
    grid = BEVGrid(0.0, -8.0, 16.0, 8.0, 1.0)
    cam2img, cam2ego = _front_camera()
    mask = fov.cell_mask(grid, cam2img, cam2ego, [WIDTH])
    centres = grid.cell_centers()
    angle = np.abs(np.arctan2(centres[..., 1], centres[..., 0] - 1.0))
    clear = np.abs(angle - HALF_ANGLE) > 0.02  # cells not on the wedge's edge
    want = (angle < HALF_ANGLE) & (centres[..., 0] - 1.0 >= fov.MIN_DEPTH)
    assert mask.shape == grid.shape
    np.testing.assert_array_equal(mask[clear], want[clear])
    assert 0 < mask.sum() < mask.size


def test_masked_targets_hold_background_outside_the_view() -> None:
    grid = BEVGrid(-6.4, -6.4, 6.4, 6.4, 0.8)
    cam2img, cam2ego = _front_camera()
    rng = np.random.default_rng(0)
    targets = {
        "bev": rng.normal(size=(3, *grid.shape)).astype(np.float32),
        "heat_logits": rng.normal(size=(2, *grid.shape)).astype(np.float32),
        "heat_prob": rng.random((2, *grid.shape)).astype(np.float32),
        "boxes": np.array([[5.0, 0.0] + [1.0] * 9, [-5.0, 0.0] + [1.0] * 9], np.float32),
    }
    kinds = {
        "bev": "bev_feature",
        "heat_logits": "heatmap",
        "heat_prob": "heatmap",
        "boxes": "boxes",
    }
    grids = {"bev": grid, "heat_logits": grid, "heat_prob": grid}
    out = fov.mask_targets(targets, kinds, grids, cam2img, cam2ego, [WIDTH], logits=["heat_logits"])
    seen = fov.cell_mask(grid, cam2img, cam2ego, [WIDTH])
    for name in ("bev", "heat_logits", "heat_prob"):
        np.testing.assert_array_equal(out[name][:, seen], targets[name][:, seen])
    assert (out["bev"][:, ~seen] == 0).all() and (out["heat_prob"][:, ~seen] == 0).all()
    least = targets["heat_logits"].reshape(2, -1).min(axis=1)
    np.testing.assert_array_equal(
        out["heat_logits"][:, ~seen], np.repeat(least[:, None], (~seen).sum(), 1)
    )
    np.testing.assert_array_equal(out["boxes"], targets["boxes"][:1])  # the box behind is dropped


class _ForwardSamples(torch.utils.data.Dataset):
    """Samples seen by one forward camera, each with its own BEV augmentation."""

    def __init__(self, tokens: list[str], augs: list[np.ndarray]):
        self.tokens, self.augs = tokens, augs

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> Sample:
        cam2img, cam2ego = _front_camera()
        aug = self.augs[i]
        return Sample(
            token=self.tokens[i], index=i, has_label=True, images=torch.zeros(1, 3, 8, WIDTH),
            cam2img=torch.from_numpy(cam2img).float(), cam2ego=torch.from_numpy(aug @ cam2ego[0]).float()[None],
            img_aug=torch.eye(4)[None], bev_aug=torch.from_numpy(aug).float(), points=torch.zeros(0, 5),
            gt_boxes=torch.zeros(0, 9), gt_labels=torch.zeros(0, dtype=torch.int64), depth=torch.zeros(1, 2, 2),
        )  # fmt: skip


def test_cached_targets_are_masked_to_the_samples_camera(tmp_path: Path) -> None:
    from bevkd.pipeline.geometry import bev_transform

    url = str(tmp_path / "s.zarr")
    write_store(url, small_contract(), n_frames=4, shard_size=4)
    store = open_store(url)
    augs = [bev_transform(), bev_transform(flip_y=True, rotation=0.2)]
    samples = _ForwardSamples([store.tokens[0], store.tokens[2]], augs)
    masked, plain = CachedTargets(samples, url, fov_only=True), CachedTargets(samples, url)
    assert masked.fov_only and not plain.fov_only
    for i in range(len(samples)):
        sample, got = masked[i]
        _, full = plain[i]
        assert set(got) == set(full)
        cam2img, cam2ego = sample.cam2img.numpy(), sample.cam2ego.numpy()
        for name, value in full.items():
            spec = store.contract.field(name)
            if spec.kind == "boxes":
                keep = fov.visible(value[:, :2].numpy(), cam2img, cam2ego, [WIDTH])
                np.testing.assert_array_equal(got[name].numpy(), value.numpy()[keep])
                continue
            seen = fov.cell_mask(field_grid(store.contract.grid, spec), cam2img, cam2ego, [WIDTH])
            assert 0 < seen.sum() < seen.size
            np.testing.assert_array_equal(got[name].numpy()[:, seen], value.numpy()[:, seen])
            outside = got[name].numpy()[:, ~seen]
            if spec.kind == "heatmap" and (spec.heatmap_activation or "logits") == "logits":
                least = value.numpy().reshape(value.shape[0], -1).min(axis=1)[:, None]
                np.testing.assert_array_equal(outside, np.broadcast_to(least, outside.shape))
            else:
                assert (outside == 0).all(), name
        # the unmasked targets are the store's fields moved by the sample's augmentation
        raw = store.read_frame(sample.token, [n for n in full if n != "boxes"])
        for name, value in raw.items():
            spec = store.contract.field(name)
            moved = transform_field(value, spec.kind, augs[i], field_grid(store.contract.grid, spec),
                                    spec.channel_map, spec.heatmap_activation or "logits")  # fmt: skip
            np.testing.assert_allclose(full[name].numpy(), moved, rtol=1e-6, atol=1e-6)


def test_fov_only_keeps_the_gt_boxes_the_camera_sees(tiny_waymo: Path) -> None:
    frames = [f for f in load_waymo_frames(str(tiny_waymo), "training") if len(f.boxes)]
    base = DataConfig(format="waymo", cameras=("FRONT",), image_size=(64, 96), depth_stride=8)
    plain = FrameDataset(frames, base, train=False, with_depth=False)
    only = FrameDataset(
        frames, DataConfig(**{**base.__dict__, "fov_only": True}), train=False, with_depth=False
    )
    dropped = kept = 0
    for i, frame in enumerate(frames):
        every, got = plain[i], only[i]  # the network input's camera (after resize and crop)
        boxes = every.gt_boxes.numpy()
        seen = fov.visible(boxes[:, :2], every.cam2img.numpy(), every.cam2ego.numpy(), [96])
        np.testing.assert_array_equal(got.gt_boxes.numpy(), boxes[seen])
        np.testing.assert_array_equal(got.gt_labels.numpy(), frame.labels[seen])
        dropped, kept = dropped + int((~seen).sum()), kept + int(seen.sum())
    assert dropped > 0 and kept > 0  # the tiny world has boxes on both sides of the wedge
