"""Checks of the standalone OpenPCDet CenterPoint reference (tests/reference/) itself.

Each expected value is worked out by hand from OpenPCDet's formulas or comes from an
independent implementation (shapely, torch's dense conv3d, spconv's own voxelizer and
convolutions, nn.Module skeletons transcribed from OpenPCDet's constructors), never from the
reference.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference.openpcdet_centerpoint import (
    forward,
    load_model_state,
    mask_points_by_range,
    mean_vfe,
    points_to_voxels,
    reduced_config,
)
from reference.openpcdet_config import CenterPointConfig
from reference.openpcdet_decode import decode_bbox_from_heatmap, generate_predicted_boxes
from reference.openpcdet_module_tree import dense_backbone_3d, openpcdet_skeleton
from reference.openpcdet_networks import backbone_2d, center_head, height_compression
from reference.openpcdet_nms import (
    box_corners_bev,
    box_overlap_bev,
    iou_bev,
    iou_bev_matrix,
    nms_gpu,
)
from reference.openpcdet_random import random_checkpoint, synthetic_point_cloud
from reference.openpcdet_state import state_dict_spec
from reference.sparse_conv import SparseVolume, sparse_conv3d, subm_conv3d, to_dense


def box(x: float, y: float, dx: float, dy: float, heading: float = 0.0) -> list[float]:
    return [x, y, 0.3, dx, dy, 1.7, heading]  # z, dz must not matter in BEV


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # small ops: with the cores shared, a second torch thread costs ~10x in spin-waits
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cfg() -> CenterPointConfig:
    return reduced_config("voxel01")


@pytest.fixture(scope="module")
def checkpoint(cfg: CenterPointConfig) -> dict:
    return random_checkpoint(cfg, seed=0)


# ---------------------------------------------------------------- rotated BEV IoU and NMS


def test_iou_of_unit_square_and_its_45_degree_rotation() -> None:
    # The overlap is the unit square minus four corner triangles with legs 1 - sqrt(2)/2:
    # 1 - 4 * (1 - sqrt(2)/2)^2 / 2 = 2 * sqrt(2) - 2; IoU = (2 sqrt2 - 2) / (4 - 2 sqrt2) = 1/sqrt2.
    a, b = box(0, 0, 1, 1), box(0, 0, 1, 1, math.pi / 4)
    assert box_overlap_bev(np.array(a), np.array([b]))[0] == pytest.approx(
        2 * math.sqrt(2) - 2, abs=1e-12
    )
    assert iou_bev(np.array(a), np.array([b]))[0] == pytest.approx(1 / math.sqrt(2), abs=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (box(0, 0, 2, 2), box(0, 0, 2, 2), 1.0),  # identical: only corners-inside (margin) count
        (box(0, 0, 2, 2), box(1, 0, 2, 2), 2 / 6),  # collinear edges: 1 x 2 overlap
        (box(0, 0, 4, 1), box(0, 0, 4, 1, math.pi / 2), 1 / 7),  # a cross: 1 x 1 overlap
        (box(0, 0, 2, 1, math.pi / 2), box(0, 0, 1, 2), 1.0),  # dx along the heading
        (box(0, 0, 1, 1), box(5, 5, 1, 1), 0.0),
    ],
)
def test_iou_hand_cases(a: list[float], b: list[float], expected: float) -> None:
    assert iou_bev(np.array(a), np.array([b]))[0] == pytest.approx(expected, abs=1e-9)


def test_iou_ignores_a_half_turn_of_heading() -> None:
    a = np.array(box(0, 0, 4, 2, 0.3))
    turned = iou_bev(a, np.array([box(0.5, 0.2, 3, 1, 0.3 + math.pi)]))[0]
    assert turned == pytest.approx(iou_bev(a, np.array([box(0.5, 0.2, 3, 1, 0.3)]))[0], abs=1e-9)
    assert 0.1 < turned < 0.9


def test_overlap_matches_shapely_exactly_without_the_margin_and_within_it_with() -> None:
    from shapely.geometry import Polygon

    rng = np.random.default_rng(3)
    n = 400
    boxes = np.concatenate(
        [
            rng.uniform(-1, 1, (2 * n, 2)),
            np.zeros((2 * n, 1)),
            rng.uniform(0.5, 3, (2 * n, 2)),
            np.ones((2 * n, 1)),
            rng.uniform(-4, 4, (2 * n, 1)),
        ],
        axis=1,
    )
    a, b = boxes[:n], boxes[n:]
    ca, cb = box_corners_bev(a)[:, :4], box_corners_bev(b)[:, :4]
    exact = np.array([Polygon(ca[i]).intersection(Polygon(cb[i])).area for i in range(n)])
    no_margin = np.array([box_overlap_bev(a[i], b[i : i + 1], margin=0.0)[0] for i in range(n)])
    upstream = np.array([box_overlap_bev(a[i], b[i : i + 1])[0] for i in range(n)])
    assert np.abs(no_margin - exact).max() < 1e-9
    # the 1 cm margin only ever adds a sliver, never removes area
    assert (upstream - exact).min() > -1e-9 and (upstream - exact).max() < 0.02
    assert (exact > 0).sum() > n // 3  # the sample has real overlaps


def test_nms_only_kept_boxes_suppress() -> None:
    # A (0.9) removes B (0.8): overlap 2.5 x 2 = 5, IoU 5/11 > 0.2. C (0.7) overlaps A by 1 x 2:
    # IoU 2/14 < 0.2, kept, though it overlaps the removed B by 5/11. D (0.95) is far away.
    boxes = np.array([box(3.0, 0, 4, 2), box(0, 0, 4, 2), box(20, 0, 1, 1), box(1.5, 0, 4, 2)])
    scores = np.array([0.7, 0.9, 0.95, 0.8])  # C, A, D, B
    assert nms_gpu(boxes, scores, 0.2).tolist() == [2, 1, 0]
    assert nms_gpu(boxes, scores, 0.5).tolist() == [2, 1, 3, 0]  # 5/11 < 0.5: B stays
    assert nms_gpu(boxes, scores, 0.2, pre_maxsize=3).tolist() == [2, 1]  # C not considered
    assert nms_gpu(boxes, scores, 0.2, post_maxsize=2).tolist() == [2, 1]


def test_nms_on_random_boxes_equals_brute_force_greedy_with_shapely() -> None:
    from shapely.geometry import Polygon

    rng = np.random.default_rng(7)
    n = 60
    boxes = np.concatenate(
        [
            rng.uniform(-4, 4, (n, 2)),
            np.zeros((n, 1)),
            rng.uniform(0.5, 3, (n, 2)),
            np.ones((n, 1)),
            rng.uniform(-4, 4, (n, 1)),
        ],
        axis=1,
    )
    scores = rng.random(n)
    polys = [Polygon(c) for c in box_corners_bev(boxes)[:, :4]]

    def iou(i: int, j: int) -> float:
        inter = polys[i].intersection(polys[j]).area
        return inter / (polys[i].area + polys[j].area - inter)

    kept: list[int] = []
    for i in np.argsort(-scores):
        if all(iou(int(k), int(i)) <= 0.2 for k in kept):
            kept.append(int(i))
    assert nms_gpu(boxes, scores, 0.2).tolist() == kept
    assert 5 < len(kept) < n - 5  # both kept and suppressed boxes occur


# ---------------------------------------------------------------- decoding


def tiny_config(**changes: object) -> CenterPointConfig:
    """A 2 x 3 BEV grid: x from -1.2, y from -0.8, voxel 0.1, stride 8 (0.8 m cells)."""
    base = dataclasses.replace(
        reduced_config("voxel01"),
        point_cloud_range=(-1.2, -0.8, -5.0, 1.2, 0.8, 3.0),
        post_center_limit_range=(-5.0, -5.0, -10.0, 5.0, 5.0, 10.0),
        max_obj_per_sample=4,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def tiny_maps(num_class: int) -> dict[str, torch.Tensor]:
    h, w = 2, 3
    return {
        "center": torch.zeros(2, h, w),
        "center_z": torch.zeros(1, h, w),
        "dim": torch.zeros(3, h, w),
        "rot": torch.zeros(2, h, w),
        "vel": torch.zeros(2, h, w),
        "hm": torch.full((num_class, h, w), -5.0),
    }


def test_decode_of_a_hand_made_heatmap() -> None:
    maps = tiny_maps(2)
    maps["hm"][0, 1, 2] = 2.0  # class 0 at row y=1, column x=2
    maps["center"][:, 1, 2] = torch.tensor([0.25, 0.75])
    maps["center_z"][0, 1, 2] = 0.5
    maps["dim"][:, 1, 2] = torch.tensor([4.0, 2.0, 1.5]).log()
    maps["rot"][:, 1, 2] = torch.tensor([0.0, 2.0])  # (cos, sin) -> atan2(2, 0) = pi/2
    maps["vel"][:, 1, 2] = torch.tensor([1.5, -0.5])
    maps["hm"][1, 0, 0] = 0.5  # class 1 at (0, 0)
    maps["center"][:, 0, 0] = torch.tensor([-0.5, 0.1])
    maps["center_z"][0, 0, 0] = -1.0
    maps["dim"][:, 0, 0] = torch.tensor([1.0, 0.5, 2.0]).log()
    maps["rot"][:, 0, 0] = torch.tensor([-1.0, 0.0])  # atan2(0, -1) = pi
    maps["vel"][:, 0, 0] = torch.tensor([0.0, 0.25])
    out = decode_bbox_from_heatmap(maps, tiny_config())
    # x = (col + dx) * 8 * 0.1 + x_min; y = (row + dy) * 0.8 + y_min; no half-cell offset
    expected = torch.tensor(
        [
            [
                (2 + 0.25) * 0.8 - 1.2,
                (1 + 0.75) * 0.8 - 0.8,
                0.5,
                4,
                2,
                1.5,
                math.pi / 2,
                1.5,
                -0.5,
            ],
            [(0 - 0.5) * 0.8 - 1.2, (0 + 0.1) * 0.8 - 0.8, -1.0, 1, 0.5, 2, math.pi, 0, 0.25],
        ]
    )
    torch.testing.assert_close(out.boxes, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        out.scores, torch.tensor([1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-0.5))])
    )
    assert out.class_ids.tolist() == [0, 1]
    # the second box's centre x = -1.6 falls outside a limit starting at -1.5 (inclusive test)
    limited = decode_bbox_from_heatmap(
        maps, tiny_config(post_center_limit_range=(-1.5, -5, -10, 5, 5, 10))
    )
    assert limited.class_ids.tolist() == [0]
    assert decode_bbox_from_heatmap(maps, tiny_config(score_thresh=0.7)).class_ids.tolist() == [0]


def test_predicted_boxes_nms_within_each_task_and_one_based_global_labels() -> None:
    cfg = tiny_config()
    tasks = [tiny_maps(len(names)) for names in cfg.class_names_each_head]
    tasks[0]["hm"][0, 1, 1] = 1.5  # car at cell (1, 1)
    tasks[1]["hm"][0, 1, 1] = 1.0  # truck and construction_vehicle at the same cell: their
    tasks[1]["hm"][1, 1, 1] = 2.0  # boxes coincide, class-agnostic NMS keeps the better one
    tasks[4]["hm"][1, 0, 2] = 0.0  # bicycle, score 0.5
    boxes, scores, labels = generate_predicted_boxes(tasks, cfg)
    # car 0 -> 1, construction_vehicle 2 -> 3, bicycle 7 -> 8; tasks in order; the car box
    # survives next to the identical construction_vehicle box (NMS does not cross tasks)
    assert labels.tolist() == [1, 3, 8]
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([1.5, 2.0, 0.0])))
    torch.testing.assert_close(boxes[0], boxes[1])


# ---------------------------------------------------------------- voxelization and VFE


def test_voxels_first_seen_order_caps_and_means_on_hand_points() -> None:
    cfg = dataclasses.replace(
        reduced_config("voxel01"),
        point_cloud_range=(0, 0, 0, 4, 3, 2),
        voxel_size=(1, 1, 1),
        max_points_per_voxel=2,
        max_num_voxels=3,
    )
    points = np.array(
        [
            [0.5, 0.5, 0.5, 10, 0.0],  # voxel (z, y, x) = (0, 0, 0)
            [3.5, 2.5, 1.5, 20, 0.1],  # (1, 2, 3)
            [0.2, 0.7, 0.1, 30, 0.2],  # (0, 0, 0) again
            [4.0, 1.0, 1.0, 99, 0.9],  # x == x_max: kept by the range mask, x cell 4 is out
            [1.5, 1.5, -0.1, 99, 0.9],  # below z_min
            [0.9, 0.9, 0.9, 40, 0.3],  # third point of (0, 0, 0): over the cap of 2
            [1.5, 0.5, 0.5, 50, 0.4],  # (0, 0, 1): third voxel
            [2.5, 0.5, 0.5, 60, 0.5],  # (0, 0, 2): a fourth voxel, over max_num_voxels
            [-0.5, 1.0, 1.0, 99, 0.9],  # x < x_min
            [3.2, 2.2, 1.2, 70, 0.6],  # (1, 2, 3) again
        ],
        dtype=np.float32,
    )
    masked = mask_points_by_range(points, cfg)
    assert len(masked) == 9  # only x = -0.5 goes; x = 4.0 passes the inclusive mask
    voxels, coords, counts = points_to_voxels(masked, cfg)
    assert coords.tolist() == [[0, 0, 0], [1, 2, 3], [0, 0, 1]]
    assert counts.tolist() == [2, 2, 1]
    assert voxels.shape == (3, 2, 5) and np.all(voxels[2, 1] == 0)
    means = mean_vfe(torch.from_numpy(voxels), torch.from_numpy(counts))
    expected = [[0.35, 0.6, 0.3, 20, 0.1], [3.35, 2.35, 1.35, 45, 0.35], [1.5, 0.5, 0.5, 50, 0.4]]
    torch.testing.assert_close(means, torch.tensor(expected))


def test_voxels_equal_spconvs_point2voxel_which_openpcdet_calls(cfg: CenterPointConfig) -> None:
    from cumm import tensorview as tv
    from spconv.utils import Point2VoxelCPU3d

    small = dataclasses.replace(cfg, max_num_voxels=700)
    rng = np.random.default_rng(5)
    points = synthetic_point_cloud(small, seed=5)
    # points on voxel faces, in float32, where the floor is decided by rounding
    edge = (rng.integers(-128, 128, (300, 3)) * np.float32(0.1)).astype(np.float32)
    edge[:, 2] = rng.integers(-25, 15, 300) * np.float32(0.2)
    edge = np.concatenate([edge, rng.random((300, 2), dtype=np.float32)], axis=1)
    points = np.concatenate([edge, points]).astype(np.float32)
    gen = Point2VoxelCPU3d(
        vsize_xyz=list(small.voxel_size),
        coors_range_xyz=list(small.point_cloud_range),
        num_point_features=5,
        max_num_points_per_voxel=small.max_points_per_voxel,
        max_num_voxels=small.max_num_voxels,
    )
    masked = mask_points_by_range(points, small)
    want = [t.numpy().copy() for t in gen.point_to_voxel(tv.from_numpy(masked))]
    got = points_to_voxels(masked, small)
    assert len(got[1]) == small.max_num_voxels  # the cap is exercised
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------- sparse convolutions


def random_volume(
    seed: int, shape: tuple[int, int, int], count: int, channels: int
) -> SparseVolume:
    gen = torch.Generator().manual_seed(seed)
    linear = torch.randperm(shape[0] * shape[1] * shape[2], generator=gen)[:count]
    coords = torch.stack(
        [linear // (shape[1] * shape[2]), (linear // shape[2]) % shape[1], linear % shape[2]], 1
    )
    return SparseVolume(
        torch.randn(count, channels, generator=gen, dtype=torch.float64), coords, shape
    )


CONVS = [  # (kernel, stride, padding): subm, conv2/3, conv4, conv_out of VoxelResBackBone8x
    ((3, 3, 3), None, None),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ((3, 3, 3), (2, 2, 2), (0, 1, 1)),
    ((3, 1, 1), (2, 1, 1), (0, 0, 0)),
]


@pytest.mark.parametrize(("kernel", "stride", "padding"), CONVS)
def test_sparse_conv_equals_dense_conv3d_on_present_sites(kernel, stride, padding) -> None:  # type: ignore[no-untyped-def]
    x = random_volume(1, (9, 10, 11), 150, 3)
    weight = torch.randn(4, *kernel, 3, dtype=torch.float64)  # spconv (C_out, kD, kH, kW, C_in)
    bias = torch.randn(4, dtype=torch.float64)
    dense_in = to_dense(x)[None]
    dense_w = weight.permute(0, 4, 1, 2, 3)
    if stride is None:
        out = subm_conv3d(x, weight, bias)
        full = F.conv3d(dense_in, dense_w, bias, padding=1)[0]
        assert torch.equal(out.coords, x.coords)
    else:
        out = sparse_conv3d(x, weight, bias, stride, padding)
        full = F.conv3d(dense_in, dense_w, bias, stride=stride, padding=padding)[0]
        hits = F.conv3d(
            (dense_in[:, :1] != 0).double(),
            torch.ones(1, 1, *kernel, dtype=torch.float64),
            stride=stride,
            padding=padding,
        )[0, 0]
        assert out.shape == tuple(hits.shape)
        assert sorted(map(tuple, out.coords.tolist())) == sorted(
            map(tuple, torch.nonzero(hits > 0).tolist())
        )
    z, y, w = out.coords.unbind(1)
    torch.testing.assert_close(out.features, full[:, z, y, w].T, rtol=1e-12, atol=1e-12)


def test_sparse_conv_equals_spconv_in_a_clean_single_threaded_process(tmp_path: Path) -> None:
    """spconv itself, in a fresh interpreter (no bevkd patch) on one thread (its CPU scatter
    races on more): same sites, same values, for every conv kind the backbone uses."""
    x = random_volume(2, (9, 10, 11), 150, 3)
    weights = [torch.randn(4, *k, 3, dtype=torch.float64) for k, _s, _p in CONVS]
    torch.save(
        {"features": x.features, "coords": x.coords, "weights": weights, "convs": CONVS},
        tmp_path / "in.pt",
    )
    script = textwrap.dedent(f"""
        import torch, spconv.pytorch as spconv
        torch.set_num_threads(1)
        d = torch.load({str(tmp_path / "in.pt")!r})
        idx = torch.cat([torch.zeros(len(d["coords"]), 1, dtype=torch.int32), d["coords"].int()], 1).contiguous()
        x = spconv.SparseConvTensor(d["features"], idx, [9, 10, 11], 1)
        outs = []
        for w, (k, s, p) in zip(d["weights"], d["convs"]):
            if s is None:
                conv = spconv.SubMConv3d(3, 4, k, bias=False).double()
            else:
                conv = spconv.SparseConv3d(3, 4, k, stride=s, padding=p, bias=False).double()
            conv.weight.data.copy_(w)
            with torch.no_grad():
                outs.append(conv(x).dense()[0])
        torch.save(outs, {str(tmp_path / "out.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    wanted = torch.load(tmp_path / "out.pt")
    for (_k, stride, padding), weight, want in zip(CONVS, weights, wanted, strict=True):
        out = (
            subm_conv3d(x, weight, None)
            if stride is None
            else sparse_conv3d(x, weight, None, stride, padding)  # type: ignore[arg-type]
        )
        torch.testing.assert_close(to_dense(out), want, rtol=1e-10, atol=1e-10)


def test_height_compression_puts_channel_c_height_d_at_c_times_d_plus_d() -> None:
    encoded = torch.arange(3 * 2 * 1 * 1, dtype=torch.float32).reshape(3, 2, 1, 1)  # (C, D, H, W)
    flat = height_compression(encoded)
    assert flat[:, 0, 0].tolist() == [
        encoded[c, d, 0, 0].item() for c in range(3) for d in range(2)
    ]


# ---------------------------------------------------------------- checkpoint layout


def test_checkpoint_keys_and_shapes_equal_openpcdets_module_tree(
    cfg: CenterPointConfig, checkpoint: dict
) -> None:
    skeleton = openpcdet_skeleton(cfg)
    want = [(k, tuple(v.shape)) for k, v in skeleton.state_dict().items()]
    assert [(k, s) for k, s, _kind in state_dict_spec(cfg)] == want
    assert [(k, tuple(v.shape)) for k, v in checkpoint["model_state"].items()] == want
    skeleton.load_state_dict(checkpoint["model_state"], strict=True)
    assert set(checkpoint) == {"epoch", "it", "model_state", "optimizer_state", "version"}


def test_checkpoint_keys_named_in_openpcdets_source(checkpoint: dict) -> None:
    # read off the constructors for reduced_config('voxel01'): sparse (8, 12, 16, 20) -> 24,
    # BEV 24 * 2 = 48 channels, 2D filters (16, 24), upsample (20, 12), shared conv 16
    shapes = {k: tuple(v.shape) for k, v in checkpoint["model_state"].items()}
    assert len(shapes) == 558
    assert shapes["global_step"] == (1,)
    assert shapes["backbone_3d.conv_input.0.weight"] == (8, 3, 3, 3, 5)
    assert shapes["backbone_3d.conv1.0.conv1.weight"] == (8, 3, 3, 3, 8)
    assert shapes["backbone_3d.conv1.1.conv2.bias"] == (8,)
    assert shapes["backbone_3d.conv2.0.0.weight"] == (12, 3, 3, 3, 8)
    assert shapes["backbone_3d.conv4.2.bn2.num_batches_tracked"] == ()
    assert shapes["backbone_3d.conv_out.0.weight"] == (24, 3, 1, 1, 20)
    assert shapes["backbone_2d.blocks.0.1.weight"] == (16, 48, 3, 3)
    assert shapes["backbone_2d.blocks.0.16.weight"] == (16, 16, 3, 3)
    assert shapes["backbone_2d.blocks.1.17.running_var"] == (24,)
    assert shapes["backbone_2d.deblocks.1.0.weight"] == (24, 12, 2, 2)
    assert shapes["dense_head.shared_conv.0.bias"] == (16,)
    assert shapes["dense_head.heads_list.0.center.0.0.weight"] == (16, 16, 3, 3)
    assert shapes["dense_head.heads_list.2.dim.1.weight"] == (3, 16, 3, 3)
    assert shapes["dense_head.heads_list.0.hm.1.bias"] == (1,)
    assert shapes["dense_head.heads_list.5.hm.1.bias"] == (2,)
    absent = [
        "backbone_3d.conv_input.0.bias",
        "backbone_3d.conv2.0.0.bias",
        "backbone_2d.blocks.0.0.weight",
        "backbone_2d.blocks.0.1.bias",
        "backbone_2d.deblocks.0.0.bias",
    ]
    assert not any(k in shapes for k in absent)
    assert not any(k.startswith(("vfe.", "map_to_bev_module.")) for k in shapes)
    hm_bias = torch.cat(
        [checkpoint["model_state"][f"dense_head.heads_list.{t}.hm.1.bias"] for t in range(6)]
    )
    assert (hm_bias - -2.19).abs().max() < 0.5


def test_2d_backbone_and_head_equal_the_module_tree_forward(
    cfg: CenterPointConfig, checkpoint: dict
) -> None:
    skeleton = openpcdet_skeleton(cfg).double()
    skeleton.load_state_dict(checkpoint["model_state"], strict=True)
    state = load_model_state(checkpoint, cfg, torch.float64)
    x = torch.randn(
        cfg.num_bev_features,
        32,
        32,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    ).relu()
    b2 = skeleton.backbone_2d
    with torch.no_grad():
        level, ups = x[None], []
        for blk, deblk in zip(b2.blocks, b2.deblocks, strict=True):  # levels are chained
            level = blk(level)
            ups.append(deblk(level))
        want_bev = torch.cat(ups, dim=1)
        bev = backbone_2d(x, state, cfg)
        torch.testing.assert_close(bev, want_bev[0], rtol=1e-12, atol=1e-12)
        shared = skeleton.dense_head.shared_conv(want_bev)
        maps = center_head(bev, state, cfg)
        for sep, task in zip(skeleton.dense_head.heads_list, maps, strict=True):
            assert list(task) == ["center", "center_z", "dim", "rot", "vel", "hm"]
            for name, value in task.items():
                torch.testing.assert_close(
                    value, getattr(sep, name)(shared)[0], rtol=1e-12, atol=1e-12
                )


def test_3d_backbone_equals_a_dense_reading_of_the_module_tree(
    cfg: CenterPointConfig, checkpoint: dict
) -> None:
    from reference.openpcdet_networks import backbone_3d

    small = dataclasses.replace(cfg, point_cloud_range=(-3.2, -3.2, -5.0, 3.2, 3.2, 3.0))  # 64 x 64
    skeleton = openpcdet_skeleton(small).double().eval()
    skeleton.load_state_dict(checkpoint["model_state"], strict=True)
    state = load_model_state(checkpoint, small, torch.float64)
    points = synthetic_point_cloud(small, seed=1)
    voxels, coords, counts = points_to_voxels(mask_points_by_range(points, small), small)
    features = mean_vfe(torch.from_numpy(voxels).double(), torch.from_numpy(counts))
    idx = torch.from_numpy(coords).long()
    dense = torch.zeros(5, *small.sparse_shape, dtype=torch.float64)
    dense[:, idx[:, 0], idx[:, 1], idx[:, 2]] = features.T
    mask = torch.zeros(small.sparse_shape, dtype=torch.bool)
    mask[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    with torch.no_grad():
        want = dense_backbone_3d(skeleton.backbone_3d, dense, mask)
        got = backbone_3d(features, idx, state, small)
    assert got.shape == want.shape == (24, 2, 8, 8)
    assert (want != 0).float().mean() > 0.2
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_spconv1_layout_weights_are_permuted_like_openpcdets_loader(
    cfg: CenterPointConfig, checkpoint: dict
) -> None:
    old = dict(checkpoint["model_state"])
    for key, _shape, kind in state_dict_spec(cfg):
        if kind == "spconv":
            old[key] = old[key].permute(1, 2, 3, 4, 0).contiguous()  # (kD, kH, kW, C_in, C_out)
    loaded = load_model_state({"model_state": old}, cfg)
    for key, value in load_model_state(checkpoint, cfg).items():
        assert torch.equal(loaded[key], value), key
    del old["dense_head.heads_list.3.vel.1.bias"]
    with pytest.raises(KeyError, match=r"heads_list\.3\.vel\.1\.bias"):
        load_model_state({"model_state": old}, cfg)


# ---------------------------------------------------------------- the whole forward


def test_forward_on_a_synthetic_frame(cfg: CenterPointConfig, checkpoint: dict) -> None:
    points = synthetic_point_cloud(cfg, seed=0)
    out = forward(checkpoint, points, cfg)
    assert len(points) > len(mask_points_by_range(points, cfg))  # some points out of range
    assert out.voxel_num_points.max() == 10  # the crowded voxel hits the cap
    d, h, w = cfg.sparse_shape
    assert (d, h, w) == (41, 256, 256)
    assert (out.voxel_coords.min(0).values >= 0).all()
    assert (out.voxel_coords.max(0).values < torch.tensor([d, h, w])).all()
    assert out.spatial_features.shape == (48, 32, 32)
    assert out.spatial_features_2d.shape == (32, 32, 32)
    assert [m["hm"].shape[0] for m in out.pred_maps] == [1, 2, 2, 1, 2, 2]
    assert out.pred_boxes.shape[1] == 9 and len(out.pred_boxes) == len(out.pred_scores) == len(
        out.pred_labels
    )
    # scores spread, thresholds and limits hold, at most 83 per task, tasks in order
    assert (
        out.pred_scores > cfg.score_thresh
    ).all() and out.pred_scores.min() < 0.5 < out.pred_scores.max() < 1
    limit = torch.tensor(cfg.post_center_limit_range)
    assert ((out.pred_boxes[:, :3] >= limit[:3]) & (out.pred_boxes[:, :3] <= limit[3:])).all()
    task_of = {
        cfg.class_names.index(n) + 1: t
        for t, names in enumerate(cfg.class_names_each_head)
        for n in names
    }
    tasks = torch.tensor([task_of[int(label)] for label in out.pred_labels])
    assert (tasks[1:] >= tasks[:-1]).all()
    for t in range(6):
        sel = tasks == t
        assert 0 < int(sel.sum()) <= cfg.nms_post_maxsize
        assert (out.pred_scores[sel][1:] <= out.pred_scores[sel][:-1]).all()
        iou = iou_bev_matrix(
            out.pred_boxes[sel, :7].double().numpy(), out.pred_boxes[sel, :7].double().numpy()
        )
        assert (np.triu(iou, 1) <= cfg.nms_thresh).all()
    assert int((tasks == 0).sum()) == cfg.nms_post_maxsize  # the post-NMS cap binds somewhere
    # the centre limit removes some candidates, and top-K (500) binds before the threshold
    wide = dataclasses.replace(cfg, post_center_limit_range=(-99, -99, -99, 99, 99, 99))
    decoded = [
        (decode_bbox_from_heatmap(m, cfg), decode_bbox_from_heatmap(m, wide)) for m in out.pred_maps
    ]
    assert any(len(a.boxes) < len(b.boxes) for a, b in decoded)
    assert any(len(b.boxes) == cfg.max_obj_per_sample for _a, b in decoded)
    assert out.to_dict()["pred_boxes"] is out.pred_boxes
