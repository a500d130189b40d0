"""The importer's own rules, by hand: config reading, key renaming, kernel layouts, every
refusal. (Equality with mmdet3d's and OpenPCDet's forward: test_foreign_exact.py.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bevkd.models import foreign
from bevkd.models.centerpoint import circle_nms, regression_per_cell, rotated_nms, topk_cells
from bevkd.pipeline.config import CenterPointConfig, Config, GridConfig

MMCFG = """
voxel_size = [0.1, 0.1, 0.2]
point_cloud_range = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
model = dict(
    type='CenterPoint',
    data_preprocessor=dict(type='Det3DDataPreprocessor', voxel=True, voxel_layer=dict(
        max_num_points=10, voxel_size=voxel_size, point_cloud_range=point_cloud_range,
        max_voxels=(90000, 120000))),
    pts_voxel_encoder=dict(type='HardSimpleVFE', num_features=5),
    pts_middle_encoder=dict(type='SparseEncoder', in_channels=5, sparse_shape=[41, 1024, 1024],
        output_channels=128, order=('conv', 'norm', 'act'),
        encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
        encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)),
        block_type='basicblock'),
    pts_backbone=dict(type='SECOND', in_channels=256, out_channels=[128, 256], layer_nums=[5, 5],
        layer_strides=[1, 2], norm_cfg=dict(type='BN', eps=0.001, momentum=0.01)),
    pts_neck=dict(type='SECONDFPN', in_channels=[128, 256], out_channels=[256, 256],
        upsample_strides=[1, 2], use_conv_for_no_stride=True),
    pts_bbox_head=dict(type='CenterHead', in_channels=sum([256, 256]),
        tasks=[dict(num_class=1, class_names=['car']),
               dict(num_class=2, class_names=['truck', 'construction_vehicle']),
               dict(num_class=2, class_names=['bus', 'trailer']),
               dict(num_class=1, class_names=['barrier']),
               dict(num_class=2, class_names=['motorcycle', 'bicycle']),
               dict(num_class=2, class_names=['pedestrian', 'traffic_cone'])],
        common_heads=dict(reg=(2, 2), height=(1, 2), dim=(3, 2), rot=(2, 2), vel=(2, 2)),
        share_conv_channel=64,
        bbox_coder=dict(type='CenterPointBBoxCoder', post_center_range=[-61.2, -61.2, -10.0, 61.2, 61.2, 10.0],
            max_num=500, score_threshold=0.1, out_size_factor=8, voxel_size=voxel_size[:2], code_size=9),
        separate_head=dict(type='SeparateHead', init_bias=-2.19, final_kernel=3)),
    test_cfg=dict(pts=dict(post_center_limit_range=[-61.2, -61.2, -10.0, 61.2, 61.2, 10.0],
        max_per_img=500, max_pool_nms=False, min_radius=[4, 12, 10, 1, 0.85, 0.175],
        score_threshold=0.1, out_size_factor=8, voxel_size=voxel_size[:2], nms_type='circle',
        pre_max_size=1000, post_max_size=83, nms_thr=0.2)))
import os
"""


def test_mmengine_config_is_read_as_literals_not_executed() -> None:
    cfg = foreign.read_mmengine_config(MMCFG + "\nbad = os.system('echo hi')\n")
    assert "bad" not in cfg  # a call other than dict/list/tuple is skipped, never run
    assert cfg["model"]["pts_bbox_head"]["in_channels"] == 512  # sum() of literals is allowed
    assert cfg["model"]["pts_bbox_head"]["bbox_coder"]["voxel_size"] == [0.1, 0.1]  # a slice


def test_mmdet3d_voxel01_config_gives_the_published_architecture() -> None:
    cp, grid = foreign.from_mmdet3d_config(foreign.read_mmengine_config(MMCFG))
    assert grid.bev_shape == (128, 128)  # 0.1 m over ±51.2 m at stride 8
    assert cp.sparse_shape == (41, 1024, 1024) and cp.max_voxels == 120000
    assert cp.sparse_layers[0] == ("subm", 5, 16, 1, 1, 1, 0)
    kinds = [layer[0] for layer in cp.sparse_layers]
    # basicblock: per stage two residual blocks, then a strided conv (not after the last stage)
    assert kinds == ["subm", "basic", "basic", "down", "basic", "basic", "down", "basic", "basic",
                     "down", "basic", "basic", "out"]  # fmt: skip
    assert cp.sparse_layers[9][3:6] == (0, 1, 1)  # the third strided conv's padding
    assert cp.sparse_layers[-1][1:3] == (128, 128)
    assert cp.tasks[1] == ("truck", "construction_vehicle") and cp.nms == "circle"
    assert cp.min_radius == (4.0, 12.0, 10.0, 1.0, 0.85, 0.175)
    assert cp.neck_conv_for_no_stride and cp.final_kernel == 3


def test_an_unsupported_encoder_is_named() -> None:
    cfg = foreign.read_mmengine_config(MMCFG.replace("HardSimpleVFE", "DynamicVFE"))
    with pytest.raises(Exception, match="DynamicVFE"):
        foreign.from_mmdet3d_config(cfg)


def test_mmdet3d_and_openpcdet_keys_rename_onto_the_same_layer() -> None:
    offsets = {1: 1, 2: 3, 3: 6, 4: 9, -1: 11}
    assert foreign.mmdet3d_rename("pts_middle_encoder.encoder_layers.encoder_layer2.1.conv1.weight", offsets) == "encoder.layers.4.conv1.weight"  # fmt: skip
    assert foreign.mmdet3d_rename("pts_middle_encoder.encoder_layers.encoder_layer1.2.0.weight", offsets) == "encoder.layers.3.conv.weight"  # fmt: skip
    assert foreign.mmdet3d_rename("pts_middle_encoder.conv_out.1.running_var", offsets) == "encoder.layers.11.bn.running_var"  # fmt: skip
    assert foreign.mmdet3d_rename("pts_bbox_head.task_heads.3.rot.0.bn.bias", offsets) == "head.tasks.3.rotation.0.1.bias"  # fmt: skip
    assert foreign.mmdet3d_rename("pts_bbox_head.task_heads.3.heatmap.1.bias", offsets) == "head.tasks.3.heatmap.1.bias"  # fmt: skip
    assert foreign.openpcdet_rename("backbone_3d.conv2.0.0.weight", offsets) == "encoder.layers.3.conv.weight"  # fmt: skip
    # OpenPCDet's 2D blocks open with a ZeroPad2d: its conv at index 1 is bevkd's at 0
    assert foreign.openpcdet_rename("backbone_2d.blocks.1.1.weight", offsets) == "backbone.blocks.1.0.weight"  # fmt: skip
    assert foreign.openpcdet_rename("dense_head.heads_list.0.hm.0.1.running_mean", offsets) == "head.tasks.0.heatmap.0.1.running_mean"  # fmt: skip
    assert foreign.openpcdet_rename("dense_head.heads_list.0.center_z.1.weight", offsets) == "head.tasks.0.z.1.weight"  # fmt: skip
    assert foreign.mmdet3d_rename("pts_bbox_head.loss_cls.weight", offsets) is None


def test_kernel_layouts_by_shape_and_declaration() -> None:
    want = torch.Size((32, 3, 3, 3, 16))  # spconv 2: (Cout, kD, kH, kW, Cin)
    v1 = torch.arange(3 * 3 * 3 * 16 * 32, dtype=torch.float32).reshape(3, 3, 3, 16, 32)
    out, problem = foreign._kernel("k", v1, want, "auto")
    assert problem is None and out is not None
    assert torch.equal(out[5, 1, 2, 0, 7], v1[1, 2, 0, 7, 5])  # element by element
    _, problem = foreign._kernel("k", v1, want, "spconv2")
    assert problem is not None and "fits spconv1" in problem
    cube = torch.zeros(3, 3, 3, 3, 3)
    _, problem = foreign._kernel("k", cube, torch.Size((3, 3, 3, 3, 3)), "auto")
    assert problem is not None and "declare --kernel-layout" in problem
    fixed, problem = foreign._kernel("k", cube, torch.Size((3, 3, 3, 3, 3)), "spconv1")
    assert problem is None and fixed is not None


def test_convert_state_lists_every_problem_at_once() -> None:
    target = {
        "head.shared.0.weight": torch.zeros(4, 2, 3, 3),
        "head.shared.1.weight": torch.zeros(4),
        "head.shared.1.num_batches_tracked": torch.zeros((), dtype=torch.long),
        "head.tasks.0.heatmap.1.bias": torch.zeros(1),
    }
    state = {
        "pts_bbox_head.shared_conv.conv.weight": torch.zeros(4, 3, 3, 3),  # wrong Cin
        "pts_bbox_head.shared_conv.bn.weight": torch.ones(4),
        "pts_bbox_head.something_else.weight": torch.zeros(1),
    }
    out, problems = foreign.convert_state(state, target, "mmdet3d")
    text = "\n".join(problems)
    assert "(4, 3, 3, 3), bevkd expects (4, 2, 3, 3)" in text
    assert "1 unexpected key(s)" in text and "something_else" in text
    assert "1 bevkd key(s) missing" in text and "head.tasks.0.heatmap.1.bias" in text
    assert "head.shared.0.weight, " not in text  # reported for its shape, not also as missing
    assert torch.equal(out["head.shared.1.weight"], torch.ones(4))
    assert out["head.shared.1.num_batches_tracked"].item() == 0


def _payload(tmp_path, meta):
    path = tmp_path / "ckpt.pth"
    torch.save({"meta": meta, "state_dict": {}}, path)
    return path


def test_mmdet3d_0x_checkpoints_are_refused_with_the_reason(tmp_path) -> None:
    path = _payload(tmp_path, {"mmdet3d_version": "0.17.1", "cfg": MMCFG})
    with pytest.raises(foreign.ImportProblem, match=r"0\.17\.1.*\(w, l, h\)"):
        foreign.import_centerpoint(path, "mmdet3d", Config())


def test_unversioned_mmdet3d_checkpoints_need_a_declaration(tmp_path) -> None:
    path = _payload(tmp_path, {"cfg": MMCFG})
    with pytest.raises(foreign.ImportProblem, match="--assume-mmdet3d-1x"):
        foreign.import_centerpoint(path, "mmdet3d", Config())
    # declared: it gets as far as the (empty) weights, each listed as missing
    with pytest.raises(foreign.ImportProblem, match=r"bevkd key\(s\) missing"):
        foreign.import_centerpoint(path, "mmdet3d", Config(), allow_unversioned=True)


def test_a_grid_that_does_not_divide_and_unknown_classes_are_named() -> None:
    grid = GridConfig(point_cloud_range=(-51.2, -51.2, -5, 51.2, 51.2, 3), voxel_size=(0.15, 0.1, 0.2), bev_stride=8)  # fmt: skip
    problems = foreign.grid_problems(grid, CenterPointConfig())
    assert any("x range" in p and "0.15" in p for p in problems)
    grid = GridConfig(point_cloud_range=(-50.2, -50.2, -5, 50.2, 50.2, 3), voxel_size=(0.1, 0.1, 0.2), bev_stride=8)  # fmt: skip
    assert any("do not divide by out_size_factor 8" in p for p in foreign.grid_problems(grid, CenterPointConfig()))  # fmt: skip
    cp = dataclasses.replace(
        CenterPointConfig(), tasks=(("car",), ("Vehicle",)), min_radius=(1.0, 1.0)
    )
    assert "['Vehicle']" in foreign.class_problems(cp, ("car", "truck"))[0]


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path) -> None:
    bad = tmp_path / "notes.pth"
    bad.write_text("hello")
    with pytest.raises(Exception, match="cannot be read as a torch checkpoint"):
        foreign.import_centerpoint(bad, "mmdet3d", Config())
    other = tmp_path / "pcdet.pth"
    torch.save({"model_state": {}}, other)
    with pytest.raises(Exception, match=r"no 'state_dict'.*model_state"):
        foreign.import_centerpoint(other, "mmdet3d", Config())


def test_circle_nms_compares_the_squared_distance_with_the_radius() -> None:
    centres = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 3.0], [0.1, 0.1]])
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # radius 4: 1.5² = 2.25 ≤ 4 is dropped, 3² = 9 > 4 kept; box 3 wins over box 0 (0.02 ≤ 4)
    assert circle_nms(centres, scores, 4.0, 83) == [3, 2]
    assert circle_nms(centres, scores, 1.0, 83) == [3, 1, 2]
    assert circle_nms(centres, scores, 1.0, 2) == [3, 1]


def test_rotated_nms_by_hand() -> None:
    # two unit squares half overlapping (IoU 1/3), a far one; a square rotated 45° on the first
    boxes = torch.tensor([
        [0.0, 0.0, 0, 1.0, 1.0, 1, 0.0],
        [0.5, 0.0, 0, 1.0, 1.0, 1, 0.0],
        [5.0, 5.0, 0, 1.0, 1.0, 1, 0.0],
        [0.0, 0.0, 0, 1.0, 1.0, 1, np.pi / 4],
    ])  # fmt: skip
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert rotated_nms(boxes, scores, 0.5, 1000, 83).tolist() == [0, 1, 2]  # 1/3 < 0.5 kept
    assert rotated_nms(boxes, scores, 0.3, 1000, 83).tolist() == [0, 2]  # 1/3 > 0.3 dropped
    # the 45° square on the unit square: intersection is an octagon of area 2(√2 - 1)
    assert rotated_nms(boxes[[0, 3]], scores[[0, 3]], 0.71, 1000, 83).tolist() == [0, 1]
    assert rotated_nms(boxes[[0, 3]], scores[[0, 3]], 0.70, 1000, 83).tolist() == [0]
    assert rotated_nms(boxes, scores, 0.3, 1, 83).tolist() == [0]  # pre-max size


def test_topk_takes_the_top_cells_per_class_then_overall() -> None:
    scores = torch.zeros(2, 2, 3)
    scores[0, 1, 2] = 0.9  # class 0, cell 5
    scores[1, 0, 1] = 0.8  # class 1, cell 1
    scores[0, 0, 0] = 0.7  # class 0, cell 0
    top, cls, cells = topk_cells(scores, 2)
    assert top.tolist() == pytest.approx([0.9, 0.8])
    assert cls.tolist() == [0, 1] and cells.tolist() == [5, 1]


def test_each_cell_takes_the_regression_of_its_best_task() -> None:
    heat = torch.full((1, 3, 1, 2), -5.0)
    heat[0, 0, 0, 0] = 1.0  # task 0 (class 0) wins at cell 0
    heat[0, 2, 0, 1] = 2.0  # task 1 (classes 1, 2) wins at cell 1
    reg = torch.stack([torch.full((10, 1, 2), 10.0), torch.full((10, 1, 2), 20.0)])[None]
    out = regression_per_cell(heat, reg, (("a",), ("b", "c")))
    assert out[0, :, 0, 0].tolist() == [10.0] * 10 and out[0, :, 0, 1].tolist() == [20.0] * 10


def test_box_conventions_round_trip() -> None:
    # a car 4 x 2 x 1.5 m standing on the ground at z = -1.8 (bottom), heading 30°
    mm = torch.tensor([[5.0, -2.0, -1.8, 4.0, 2.0, 1.5, 0.5236, 1.0, 0.0]])
    ours = foreign.boxes_from_mmdet3d(mm)
    assert ours[0, 2].item() == pytest.approx(-1.05)  # the centre, 0.75 m above the bottom
    assert torch.equal(ours[:, [0, 1, 3, 4, 5, 6, 7, 8]], mm[:, [0, 1, 3, 4, 5, 6, 7, 8]])
    assert torch.allclose(foreign.boxes_to_mmdet3d(ours), mm)
    pcdet = torch.tensor([[5.0, -2.0, -1.05, 4.0, 2.0, 1.5, 0.5236, 1.0, 0.0]])
    assert torch.equal(foreign.boxes_from_openpcdet(pcdet), ours)
    cos_sin = torch.tensor([[[[0.866]], [[0.5]]]])  # heading 30° as OpenPCDet regresses it
    sin_cos = foreign.rotation_from_openpcdet(cos_sin)
    assert torch.atan2(sin_cos[0, 0], sin_cos[0, 1]).item() == pytest.approx(0.5236, abs=1e-4)
