"""Make the mmdet3d CenterPoint reference fixture: mmdet3d's own model, run by mmdet3d itself.

bevkd re-implements CenterPoint and imports mmdet3d checkpoints; these files let its tests
check both against the real thing without mmdet3d installed. Nothing here imports bevkd.

Regenerate (from the repository root; the venv is made by mmdet3d_env.sh beside this file):

    bash tests/data/foreign/mmdet3d_env.sh /work/mmenv
    /work/mmenv/bin/python tests/data/foreign/make_mmdet3d_reference.py

Made with torch 2.13.0+cpu, numpy 1.26.4, mmcv 2.1.0 (built from source with its CPU ops),
mmengine 0.10.7, mmdet 3.3.0, mmdet3d 1.4.0 and spconv 2.3.8 (PyPI's CPU build), python 3.11.7;
the versions seen at run time are stored in each file. One thread (spconv's CPU scatter races
with more) and fixed seeds: a rerun on these versions writes byte-identical files (~20 s).

For each variant (VARIANTS below: voxel01, voxel0075, pillar02) it writes

    mmdet3d_centerpoint_<variant>.pth            mmengine-style checkpoint {"meta", "state_dict"}
    mmdet3d_centerpoint_<variant>_reference.pt   inputs, intermediates and outputs (plain dict)

README.md beside this file describes their contents. The models mirror
configs/centerpoint/centerpoint_{voxel01,voxel0075,pillar02}_second_secfpn* (nuScenes, six task
groups) at smaller channel widths and a smaller point-cloud range, with random weights: see
build_model (weights, BatchNorm, biases) and calibrate_heads (box sizes, and heatmaps that let
a few dozen boxes per frame through, with the score threshold and NMS thresholds well clear of
every candidate). Everything is checked before it is written: check_voxels, check_outputs, and
check_checkpoint, which reloads the .pth with mmengine's load_checkpoint into a fresh model and
gets the same boxes.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import mmcv
import mmdet
import mmdet3d
import mmengine
import numpy as np
import spconv
import torch
from mmcv.ops import box_iou_rotated
from mmdet3d.registry import MODELS
from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
from mmdet3d.structures.bbox_3d import Box3DMode
from mmdet3d.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import (
    get_state_dict,
    load_checkpoint,
    save_checkpoint,
    weights_to_cpu,
)
from spconv.pytorch import SparseConvTensor
from spconv.pytorch.conv import SparseConvolution

OUT_DIR = Path(__file__).resolve().parent
SEED = 20240611
N_FRAMES = 2
HEATMAP_TOP_PER_FRAME = 4  # about this many cells per class and frame pass the threshold
HEATMAP_LOGIT_STD = 4.0  # spread of the heatmap logits, so scores reach well into (0.1, 1)
# (spread, mean) per output channel of the box heads; exp(dim) are the sizes (l, w, h) in m.
HEAD_OUTPUTS = {
    "reg": (0.25, [0.5, 0.5]),
    "height": (0.4, [-1.0]),
    "dim": (0.25, [math.log(2.5), math.log(1.5), math.log(1.5)]),
    "rot": (1.0, [0.0, 0.0]),
    "vel": (1.0, [0.0, 0.0]),
}
SPARSE_WEIGHT_LAYOUT = "spconv2: (out_channels, kD, kH, kW, in_channels)"

CLASS_NAMES = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
TASKS = [
    dict(num_class=1, class_names=["car"]),
    dict(num_class=2, class_names=["truck", "construction_vehicle"]),
    dict(num_class=2, class_names=["bus", "trailer"]),
    dict(num_class=1, class_names=["barrier"]),
    dict(num_class=2, class_names=["motorcycle", "bicycle"]),
    dict(num_class=2, class_names=["pedestrian", "traffic_cone"]),
]
COMMON_HEADS = dict(reg=(2, 2), height=(1, 2), dim=(3, 2), rot=(2, 2), vel=(2, 2))
POST_CENTER_RANGE = [-61.2, -61.2, -10.0, 61.2, 61.2, 10.0]
BN_2D = dict(type="BN", eps=1e-3, momentum=0.01)

# Smaller than nuScenes' configs; structure (stages, blocks, strides, paddings) kept.
VARIANTS: dict[str, dict[str, Any]] = {
    "voxel01": dict(
        voxel_size=[0.1, 0.1, 0.2],
        point_cloud_range=[-12.8, -12.8, -5.0, 12.8, 12.8, 3.0],
        nms_type="circle",  # ..._head-circlenms_8xb4-cyclic-20e_nus-3d.py
    ),
    "voxel0075": dict(
        voxel_size=[0.075, 0.075, 0.2],
        point_cloud_range=[-10.8, -10.8, -5.0, 10.8, 10.8, 3.0],
        nms_type="rotate",  # centerpoint_voxel0075_second_secfpn_8xb4-cyclic-20e_nus-3d.py
    ),
    "pillar02": dict(
        voxel_size=[0.2, 0.2, 8],
        point_cloud_range=[-12.8, -12.8, -5.0, 12.8, 12.8, 3.0],
        nms_type="rotate",  # centerpoint_pillar02_second_secfpn_8xb4-cyclic-20e_nus-3d.py
    ),
}


def grid_size(voxel_size: list[float], pcr: list[float]) -> list[int]:
    """Voxel grid (x, y, z) as mmdet3d computes it: round((max - min) / size)."""
    return [round((pcr[i + 3] - pcr[i]) / voxel_size[i]) for i in range(3)]


def head_config(in_channels: int, out_size_factor: int, v: dict[str, Any]) -> dict[str, Any]:
    """CenterHead as in configs/_base_/models/centerpoint_*_second_secfpn_nus.py."""
    return dict(
        type="CenterHead",
        in_channels=in_channels,
        tasks=TASKS,
        common_heads=COMMON_HEADS,
        share_conv_channel=16,
        bbox_coder=dict(
            type="CenterPointBBoxCoder",
            post_center_range=POST_CENTER_RANGE,
            max_num=500,
            score_threshold=0.1,
            out_size_factor=out_size_factor,
            voxel_size=v["voxel_size"][:2],
            pc_range=v["point_cloud_range"][:2],
            code_size=9,
        ),
        separate_head=dict(type="SeparateHead", init_bias=-2.19, final_kernel=3, head_conv=8),
        loss_cls=dict(type="mmdet.GaussianFocalLoss", reduction="mean"),
        loss_bbox=dict(type="mmdet.L1Loss", reduction="mean", loss_weight=0.25),
        norm_bbox=True,
    )


def run_configs(out_size_factor: int, v: dict[str, Any]) -> dict[str, Any]:
    """train_cfg / test_cfg as the nuScenes configs write them, for this range."""
    vs, pcr = v["voxel_size"], v["point_cloud_range"]
    train = dict(
        grid_size=grid_size(vs, pcr),
        voxel_size=vs,
        out_size_factor=out_size_factor,
        dense_reg=1,
        gaussian_overlap=0.1,
        max_objs=500,
        min_radius=2,
        code_weights=[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2],
        point_cloud_range=pcr,
    )
    test = dict(
        post_center_limit_range=POST_CENTER_RANGE,
        max_per_img=500,
        max_pool_nms=False,
        min_radius=[4, 12, 10, 1, 0.85, 0.175],
        score_threshold=0.1,
        pc_range=pcr[:2],
        out_size_factor=out_size_factor,
        voxel_size=vs[:2],
        nms_type=v["nms_type"],
        pre_max_size=1000,
        post_max_size=83,
        nms_thr=0.2,
    )
    return dict(train_cfg=dict(pts=train), test_cfg=dict(pts=test))


def hard_voxels(v: dict[str, Any], max_points: int, max_voxels: tuple[int, int]) -> dict[str, Any]:
    """Det3DDataPreprocessor with hard voxelization (max_voxels: train, test), as the configs."""
    return dict(
        type="Det3DDataPreprocessor",
        voxel=True,
        voxel_layer=dict(
            max_num_points=max_points,
            voxel_size=v["voxel_size"],
            point_cloud_range=v["point_cloud_range"],
            max_voxels=max_voxels,
        ),
    )


def voxel_model_config(v: dict[str, Any]) -> dict[str, Any]:
    """centerpoint_voxel*_second_secfpn_nus: hard voxels, SparseEncoder, SECOND, SECONDFPN."""
    nx, ny, nz = grid_size(v["voxel_size"], v["point_cloud_range"])
    return dict(
        type="CenterPoint",
        data_preprocessor=hard_voxels(v, 10, (90000, 120000)),
        pts_voxel_encoder=dict(type="HardSimpleVFE", num_features=5),
        pts_middle_encoder=dict(
            type="SparseEncoder",
            in_channels=5,
            sparse_shape=[nz + 1, ny, nx],
            base_channels=4,
            output_channels=8,
            order=("conv", "norm", "act"),
            encoder_channels=((4, 4, 8), (8, 8, 16), (16, 16, 16), (16, 16)),
            encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)),
            block_type="basicblock",
        ),
        pts_backbone=dict(
            type="SECOND",
            in_channels=16,
            out_channels=[8, 16],
            layer_nums=[2, 2],
            layer_strides=[1, 2],
            norm_cfg=BN_2D,
            conv_cfg=dict(type="Conv2d", bias=False),
        ),
        pts_neck=dict(
            type="SECONDFPN",
            in_channels=[8, 16],
            out_channels=[8, 8],
            upsample_strides=[1, 2],
            norm_cfg=BN_2D,
            upsample_cfg=dict(type="deconv", bias=False),
            use_conv_for_no_stride=True,
        ),
        pts_bbox_head=head_config(16, 8, v),
        **run_configs(8, v),
    )


def pillar_model_config(v: dict[str, Any]) -> dict[str, Any]:
    """centerpoint_pillar02_second_secfpn_nus: PillarFeatureNet, scatter, SECOND x3, SECONDFPN."""
    nx, ny, _ = grid_size(v["voxel_size"], v["point_cloud_range"])
    return dict(
        type="CenterPoint",
        data_preprocessor=hard_voxels(v, 20, (30000, 40000)),
        pts_voxel_encoder=dict(
            type="PillarFeatureNet",
            in_channels=5,
            feat_channels=[8],
            with_distance=False,
            voxel_size=tuple(v["voxel_size"]),
            norm_cfg=dict(type="BN1d", eps=1e-3, momentum=0.01),
            legacy=False,
            point_cloud_range=v["point_cloud_range"],
        ),
        pts_middle_encoder=dict(type="PointPillarsScatter", in_channels=8, output_shape=(ny, nx)),
        pts_backbone=dict(
            type="SECOND",
            in_channels=8,
            out_channels=[8, 16, 24],
            layer_nums=[1, 2, 2],
            layer_strides=[2, 2, 2],
            norm_cfg=BN_2D,
            conv_cfg=dict(type="Conv2d", bias=False),
        ),
        pts_neck=dict(
            type="SECONDFPN",
            in_channels=[8, 16, 24],
            out_channels=[8, 8, 8],
            upsample_strides=[0.5, 1, 2],
            norm_cfg=BN_2D,
            upsample_cfg=dict(type="deconv", bias=False),
            use_conv_for_no_stride=True,
        ),
        pts_bbox_head=head_config(24, 4, v),
        **run_configs(4, v),
    )


def make_config(name: str) -> Config:
    """The whole mmengine Config (what a runner would save in a checkpoint's meta)."""
    v = VARIANTS[name]
    model = pillar_model_config(v) if name.startswith("pillar") else voxel_model_config(v)
    return Config(
        dict(
            default_scope="mmdet3d",
            class_names=list(CLASS_NAMES),
            point_cloud_range=v["point_cloud_range"],
            voxel_size=v["voxel_size"],
            model=model,
        )
    )


# ---- synthetic frames ------------------------------------------------------------------------

# (length, width, height) in metres of the objects scattered in each frame.
OBJECT_DIMS = {
    "car": (4.5, 1.9, 1.6),
    "truck": (7.0, 2.5, 3.0),
    "bus": (10.0, 2.9, 3.4),
    "barrier": (2.4, 0.5, 1.0),
    "bicycle": (1.8, 0.6, 1.3),
    "pedestrian": (0.7, 0.7, 1.8),
    "traffic_cone": (0.4, 0.4, 0.8),
}
GROUND_Z = -1.8  # nuScenes' LIDAR_TOP sits about 1.8 m above the road


def box_surface_points(
    rng: np.random.Generator, centre: np.ndarray, dims: tuple[float, ...], yaw: float, n: int
) -> np.ndarray:
    """n points on the sides and top of a box resting on the ground, (n, 3)."""
    length, width, height = dims
    local = rng.uniform(-0.5, 0.5, size=(n, 3)) * np.array([length, width, height])
    face = rng.integers(0, 5, size=n)  # 0/1: +-x side, 2/3: +-y side, 4: top
    local[face == 0, 0], local[face == 1, 0] = length / 2, -length / 2
    local[face == 2, 1], local[face == 3, 1] = width / 2, -width / 2
    local[face == 4, 2] = height / 2
    c, s = math.cos(yaw), math.sin(yaw)
    xy = local[:, :2] @ np.array([[c, s], [-s, c]])
    return np.column_stack([xy + centre[:2], local[:, 2] + GROUND_Z + height / 2])


def outside_points(rng: np.random.Generator, pcr: list[float], n: int) -> np.ndarray:
    """Points the voxelizer must drop: beyond x/y, below/above z, and on the upper edges."""
    x0, y0, z0, x1, y1, z1 = pcr
    far = rng.uniform(1.05, 1.6, size=(n, 2)) * rng.choice([-1.0, 1.0], size=(n, 2))
    far *= np.array([x1, y1])
    far[: n // 2, 1] = rng.uniform(y0, y1, size=n // 2)  # only x out of range
    z = rng.uniform(z0, z1, size=(n, 1))
    beyond = np.column_stack([far, z])
    vertical = np.column_stack(
        [rng.uniform(x0, x1, size=(8, 2)), np.r_[rng.uniform(z1 + 0.1, z1 + 2, 4), [z0 - 0.5] * 4]]
    )
    # The range is [min, max): a point exactly on a max face is out, on a min face it is in.
    edges = np.array([[x1, 0.3, -1.0], [0.4, y1, -1.0], [1.1, -2.3, z1], [x1, y1, z1]])
    return np.concatenate([beyond, vertical, edges])


def make_frame(rng: np.random.Generator, voxel_size: list[float], pcr: list[float]) -> np.ndarray:
    """One synthetic sweep, float32 (N, 5): x, y, z, intensity, time lag; shuffled."""
    x0, y0, _, x1, y1, _ = pcr
    n_ground = 900
    ground = np.column_stack(
        [rng.uniform(x0, x1, n_ground), rng.uniform(y0, y1, n_ground), np.zeros(n_ground)]
    )
    ground[:, 2] = GROUND_Z + rng.normal(0.0, 0.03, n_ground)
    parts = [ground]
    span = np.array([x1 - x0, y1 - y0])
    for dims in OBJECT_DIMS.values():
        centre = np.array([x0, y0]) + span * rng.uniform(0.15, 0.85, size=2)
        n = int(np.clip(40 * dims[0] * dims[2], 30, 160))
        parts.append(box_surface_points(rng, centre, dims, float(rng.uniform(-np.pi, np.pi)), n))
    # A tight blob inside one voxel: more points than max_num_points keeps.
    size = np.asarray(voxel_size)
    cell = np.floor((np.array([5.0, -3.5, -1.0]) - pcr[:3]) / size)
    blob_low = np.asarray(pcr[:3]) + (cell + 0.2) * size
    parts.append(blob_low + rng.uniform(0.0, 0.6, size=(30, 3)) * size)
    # Exactly on the lower faces: inside.
    parts.append(np.array([[x0, 1.7, -1.2], [-0.9, y0, -1.2], [2.2, 3.1, pcr[2]]]))
    parts.append(outside_points(rng, pcr, 60))
    xyz = np.concatenate(parts)
    intensity = rng.integers(0, 256, size=len(xyz)).astype(np.float64)
    time_lag = rng.choice(np.arange(10) * 0.05, size=len(xyz))  # 10 sweeps, 20 Hz
    points = np.column_stack([xyz, intensity, time_lag]).astype(np.float32)
    return points[rng.permutation(len(points))]


def in_range_mask(points: np.ndarray, voxel_size: list[float], pcr: list[float]) -> np.ndarray:
    """Which points hard voxelization keeps: 0 <= floor((p - min) / size) < grid, in float32."""
    size = np.asarray(voxel_size, dtype=np.float32)
    low = np.asarray(pcr[:3], dtype=np.float32)
    cell = np.floor((points[:, :3] - low) / size)
    return np.all((cell >= 0) & (cell < np.asarray(grid_size(voxel_size, pcr))), axis=1)


# ---- the model -------------------------------------------------------------------------------


def build_model(cfg: Config) -> torch.nn.Module:
    """MODELS.build + init_weights, as mmengine's Runner does, then random non-trivial values.

    Weights are redrawn N(0, 2 / fan_in) so features neither vanish nor blow up through the
    sparse encoder (spconv's own init shrinks them to a constant); BatchNorm statistics and
    affine parameters and every bias are random, so an importer that drops one is caught.
    """
    model = MODELS.build(cfg.model)
    model.init_weights()
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                module.running_var.copy_(torch.empty(c).uniform_(0.5, 2.0, generator=gen))
                module.weight.copy_(torch.empty(c).uniform_(0.6, 1.4, generator=gen))
                module.bias.copy_(0.1 * torch.randn(c, generator=gen))
                continue
            if isinstance(module, torch.nn.ConvTranspose2d):  # (in, out, k, k), k == stride
                fan_in = module.weight.shape[0]
            elif isinstance(module, torch.nn.Conv2d | torch.nn.Linear | SparseConvolution):
                fan_in = module.weight[0].numel()  # spconv2 keeps out_channels first too
            else:
                continue
            module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
            if module.bias is not None:
                module.bias.normal_(0.0, 0.05, generator=gen)
    return model.eval()


def data_samples(n: int) -> list[Det3DDataSample]:
    """The metainfo mmdet3d's LiDAR test pipeline (Pack3DDetInputs) leaves on each sample."""
    return [
        Det3DDataSample(
            metainfo=dict(
                sample_idx=i,
                box_type_3d=LiDARInstance3DBoxes,
                box_mode_3d=Box3DMode.LIDAR,
                lidar_path=f"synthetic_{i}.bin",
            )
        )
        for i in range(n)
    ]


def wide_cut(values: torch.Tensor, target: int) -> torch.Tensor:
    """A cut between two sorted values, near rank `target`, in the widest gap there.

    The score threshold then sits far (relative to float noise) from every logit, so a
    re-implementation that differs in the last bits keeps the same boxes.
    """
    ordered = values.sort(descending=True).values
    ranks = torch.arange(target // 2, 2 * target)
    gaps = ordered[ranks - 1] - ordered[ranks]
    r = int(ranks[gaps.argmax()])
    return (ordered[r - 1] + ordered[r]) / 2


def calibrate_heads(model: torch.nn.Module, frames: list[torch.Tensor]) -> None:
    """Rescale each head's last conv, per output channel, from a forward pass on the frames.

    Box heads get the spread and mean in HEAD_OUTPUTS (boxes of plausible size and height);
    heatmaps get HEATMAP_LOGIT_STD and a bias that lets ~HEATMAP_TOP_PER_FRAME cells per class
    and frame score above the 0.1 threshold.
    """
    seen = Capture(model)
    with torch.no_grad():
        model.test_step(dict(inputs=dict(points=frames), data_samples=data_samples(len(frames))))
    seen.remove()
    threshold_logit = math.log(0.1 / 0.9)
    with torch.no_grad():
        for task, out in zip(model.pts_bbox_head.task_heads, seen.values["head"], strict=True):
            for name, value in out[0].items():
                conv = getattr(task, name)[-1]
                raw = (value - conv.bias.view(1, -1, 1, 1)).transpose(0, 1).flatten(1)
                if name == "heatmap":
                    scale = HEATMAP_LOGIT_STD / raw.std(dim=1)
                    cut = [wide_cut(row, HEATMAP_TOP_PER_FRAME * len(frames)) for row in raw]
                    bias = threshold_logit - scale * torch.stack(cut)
                else:
                    spread, mean = HEAD_OUTPUTS[name]
                    scale = spread / raw.std(dim=1)
                    bias = torch.tensor(mean) - scale * raw.mean(dim=1)
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                conv.bias.copy_(bias)


def _detach(value: Any) -> Any:
    """Copies of the tensors in nested lists/tuples/dicts, and of a SparseConvTensor's parts."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, SparseConvTensor):
        return dict(indices=value.indices.clone(), features=value.features.detach().clone())
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_detach(v) for v in value]
    return value


class Capture:
    """Forward hooks on mmdet3d's own modules, plus a wrapper round bbox_coder.decode.

    Records what model.test_step passes between the stages; removes itself with remove().
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.values: dict[str, Any] = {"decoded": []}
        modules = {
            "preprocessed": model.data_preprocessor,
            "voxel_features": model.pts_voxel_encoder,
            "middle": model.pts_middle_encoder,
            "backbone": model.pts_backbone,
            "neck": model.pts_neck,
            "head": model.pts_bbox_head,
        }
        if hasattr(model.pts_middle_encoder, "conv_input"):  # SparseEncoder's first SubMConv3d
            modules["sparse_conv_input"] = model.pts_middle_encoder.conv_input
        self._handles = [m.register_forward_hook(self._hook(k)) for k, m in modules.items()]
        self._coder = model.pts_bbox_head.bbox_coder
        decode = self._coder.decode

        def recording_decode(*args: Any, **kwargs: Any) -> Any:
            out = decode(*args, **kwargs)
            self.values["decoded"].append(_detach(out))
            return out

        self._coder.decode = recording_decode

    def _hook(self, key: str) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            self.values[key] = _detach(output)

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        del self._coder.decode  # back to the class's method


# ---- running it and writing the files ---------------------------------------------------------


def versions() -> dict[str, str]:
    return dict(
        python=sys.version.split()[0],
        torch=str(torch.__version__),  # a TorchVersion, which weights_only loads refuse
        numpy=np.__version__,
        mmcv=mmcv.__version__,
        mmengine=mmengine.__version__,
        mmdet=mmdet.__version__,
        mmdet3d=mmdet3d.__version__,
        spconv=spconv.__version__,
    )


def run_mmdet3d(model: torch.nn.Module, frames: list[torch.Tensor]) -> tuple[dict, list]:
    """model.test_step, mmdet3d's inference path: preprocess (voxelize), extract_feat, predict."""
    seen = Capture(model)
    with torch.no_grad():
        results = model.test_step(
            dict(inputs=dict(points=frames), data_samples=data_samples(len(frames)))
        )
    seen.remove()
    return seen.values, results


def pack_voxels(voxels: torch.Tensor, num_points: torch.Tensor) -> torch.Tensor:
    """The non-padding rows of hard voxels (M, max_num_points, 5), in voxel order: (P, 5).

    mmdet3d's zero padding is asserted, so voxels[arange(max) < num_points[:, None]] = packed
    on a zero tensor gives the hard voxels back exactly (about 5x smaller on disk).
    """
    filled = torch.arange(voxels.shape[1]) < num_points[:, None]
    assert not voxels[~filled].any(), "hard voxel padding is not zero"
    return voxels[filled]


def middle_out(
    name: str, middle: torch.Tensor, features: torch.Tensor, coors: torch.Tensor
) -> torch.Tensor | None:
    """The middle encoder's dense BEV map, except PointPillarsScatter's: that one is None.

    The pillar canvas (B, C, 128, 128) would be most of the fixture; it is asserted here to be
    zero but for canvas[b, :, y, x] = voxel_features[i] where coors[i] = (b, 0, y, x).
    """
    if not name.startswith("pillar"):  # the sparse encoder's (B, C * D, H, W)
        return middle
    b, y, x = coors[:, 0].long(), coors[:, 2].long(), coors[:, 3].long()
    canvas = torch.zeros_like(middle)
    canvas[b, :, y, x] = features
    assert torch.equal(canvas, middle), "PointPillarsScatter is not a plain scatter"
    return None


def reference_dict(
    name: str, cfg: Config, frames: list[torch.Tensor], seen: dict, results: list
) -> dict[str, Any]:
    """The plain dict of tensors saved as mmdet3d_centerpoint_<name>_reference.pt."""
    v = VARIANTS[name]
    voxels = seen["preprocessed"]["inputs"]["voxels"]
    head_cfg = cfg.model.pts_bbox_head
    ref: dict[str, Any] = dict(
        format="bevkd.foreign.mmdet3d_centerpoint_reference/1",
        variant=name,
        versions=versions(),
        sparse_conv_weight_layout=SPARSE_WEIGHT_LAYOUT,
        config=dict(
            class_names=list(CLASS_NAMES),
            tasks=[list(t["class_names"]) for t in TASKS],
            voxel_size=list(v["voxel_size"]),
            point_cloud_range=list(v["point_cloud_range"]),
            grid_size=grid_size(v["voxel_size"], v["point_cloud_range"]),
            max_num_points=cfg.model.data_preprocessor.voxel_layer.max_num_points,
            max_voxels=list(cfg.model.data_preprocessor.voxel_layer.max_voxels),
            out_size_factor=head_cfg.bbox_coder.out_size_factor,
            bbox_coder=head_cfg.bbox_coder.to_dict(),
            norm_bbox=head_cfg.norm_bbox,
            test_cfg=cfg.model.test_cfg.pts.to_dict(),
        ),
        points=[f.clone() for f in frames],
        points_in_range=[
            torch.from_numpy(in_range_mask(f.numpy(), v["voxel_size"], v["point_cloud_range"]))
            for f in frames
        ],
        voxel_points=pack_voxels(voxels["voxels"], voxels["num_points"]),
        num_points=voxels["num_points"],
        coors=voxels["coors"],
        voxel_features=seen["voxel_features"],
        middle_encoder_out=middle_out(
            name, seen["middle"], seen["voxel_features"], voxels["coors"]
        ),
        backbone_out=seen["backbone"],
        neck_out=seen["neck"][0],
        head_out=[task[0] for task in seen["head"]],
        decoded=[
            [dict(bboxes=d["bboxes"], scores=d["scores"], labels=d["labels"]) for d in task]
            for task in seen["decoded"]
        ],
        bboxes_3d=[r.pred_instances_3d.bboxes_3d.tensor.clone() for r in results],
        scores_3d=[r.pred_instances_3d.scores_3d.clone() for r in results],
        labels_3d=[r.pred_instances_3d.labels_3d.clone() for r in results],
    )
    if "sparse_conv_input" in seen:
        ref["sparse_conv_input"] = seen["sparse_conv_input"]
    return ref


def checkpoint_dict(model: torch.nn.Module, cfg: Config) -> dict[str, Any]:
    """What mmengine's Runner.save_checkpoint writes, less the optimizer and message hub."""
    meta = dict(
        cfg=cfg.pretty_text,
        seed=SEED,
        experiment_name="bevkd_foreign_reference",
        mmengine_version=mmengine.__version__,
        mmdet3d_version=mmdet3d.__version__,
        mmcv_version=mmcv.__version__,
        torch_version=str(torch.__version__),
        spconv_version=spconv.__version__,
        sparse_conv_weight_layout=SPARSE_WEIGHT_LAYOUT,
        dataset_meta=dict(classes=CLASS_NAMES),
    )
    return dict(meta=meta, state_dict=weights_to_cpu(get_state_dict(model)))


# ---- sanity checks ---------------------------------------------------------------------------


def check_voxels(ref: dict[str, Any]) -> None:
    """Every kept point is in range, every in-range cell is a voxel, overflow is truncated."""
    cfg = ref["config"]
    size = np.asarray(cfg["voxel_size"], dtype=np.float32)
    low = np.asarray(cfg["point_cloud_range"][:3], dtype=np.float32)
    for b, (points, inside) in enumerate(zip(ref["points"], ref["points_in_range"], strict=True)):
        assert 0 < int(inside.sum()) < len(points), "frames must have points on both sides"
        rows = ref["coors"][:, 0] == b
        cells = np.floor((points[inside].numpy()[:, :3] - low) / size).astype(np.int64)
        unique, counts = np.unique(cells[:, ::-1], axis=0, return_counts=True)  # z, y, x
        coors = ref["coors"][rows, 1:].numpy()
        assert len(coors) == len(unique), f"frame {b}: {len(coors)} voxels, {len(unique)} cells"
        assert (np.unique(coors, axis=0) == unique).all()
        num = ref["num_points"][rows]
        assert int(num.sum()) == int(np.minimum(counts, cfg["max_num_points"]).sum())
        assert int(num.max()) == cfg["max_num_points"], "no voxel was truncated"
        start = int(ref["num_points"][ref["coors"][:, 0] < b].sum())
        kept = ref["voxel_points"][start : start + int(num.sum())]
        kept_set = {tuple(p) for p in kept.numpy().tolist()}
        assert kept_set <= {tuple(p) for p in points[inside].numpy().tolist()}


def check_outputs(ref: dict[str, Any]) -> None:
    """Head shapes, and a useful number of boxes with spread scores after NMS."""
    cfg = ref["config"]
    grid = cfg["grid_size"]
    bev = (grid[1] // cfg["out_size_factor"], grid[0] // cfg["out_size_factor"])
    batch = len(ref["points"])
    for names, out in zip(cfg["tasks"], ref["head_out"], strict=True):
        channels = {**{k: c for k, (c, _) in COMMON_HEADS.items()}, "heatmap": len(names)}
        assert {k: tuple(t.shape) for k, t in out.items()} == {
            k: (batch, c, *bev) for k, c in channels.items()
        }
    decoded = [sum(len(task[b]["scores"]) for task in ref["decoded"]) for b in range(batch)]
    kept = [len(s) for s in ref["scores_3d"]]
    print(f"  boxes per frame: decoded {decoded}, after NMS {kept}")
    assert all(5 <= n <= 83 for n in kept), kept
    assert sum(kept) < sum(decoded), "NMS removed nothing"
    for scores in ref["scores_3d"]:
        assert float(scores.min()) >= 0.1 and float(scores.max()) > 0.5
        assert len(torch.unique(scores)) == len(scores), "tied scores"
    score_margin, pair_margin = nms_margins(ref)
    print(f"  closest to a threshold: score {score_margin:.2g}, NMS pair {pair_margin:.2g}")
    assert score_margin > 1e-3 and pair_margin > 1e-3, "a re-implementation could flip a box"
    for boxes, labels in zip(ref["bboxes_3d"], ref["labels_3d"], strict=True):
        assert boxes.shape[1] == 9 and torch.isfinite(boxes).all()
        assert len(torch.unique(labels)) >= 3, "too few classes among the boxes"


def nms_margins(ref: dict[str, Any]) -> tuple[float, float]:
    """How far the closest case is from flipping: (score vs threshold, pair vs NMS threshold).

    Scores: every heatmap cell against the 0.1 threshold. Pairs: every two candidates of one
    task and frame, squared centre distance against min_radius (circle) or BEV IoU as
    nms_rotated sees it against nms_thr (rotate).
    """
    test_cfg = ref["config"]["test_cfg"]
    scores = torch.cat([out["heatmap"].sigmoid().flatten() for out in ref["head_out"]])
    score_margin = float((scores - test_cfg["score_threshold"]).abs().min())
    pair_margin = math.inf
    for task_id, task in enumerate(ref["decoded"]):
        for frame in task:
            boxes = frame["bboxes"].double()
            i, j = torch.triu_indices(len(boxes), len(boxes), 1)
            if len(i) == 0:
                continue
            if test_cfg["nms_type"] == "circle":
                dist2 = ((boxes[i, :2] - boxes[j, :2]) ** 2).sum(1)
                gap = dist2 - test_cfg["min_radius"][task_id]
            else:
                bev = frame["bboxes"][:, [0, 1, 3, 4, 6]]
                gap = box_iou_rotated(bev, bev)[i, j] - test_cfg["nms_thr"]
            pair_margin = min(pair_margin, float(gap.abs().min()))
    return score_margin, pair_margin


def check_checkpoint(path: Path, cfg: Config, ref: dict[str, Any]) -> None:
    """A fresh model loaded from the saved file by mmengine reproduces the saved outputs."""
    torch.load(path, map_location="cpu", weights_only=True)  # plain types only
    model = MODELS.build(cfg.model)
    load_checkpoint(model, str(path), map_location="cpu", strict=True)
    _, results = run_mmdet3d(model.eval(), ref["points"])
    for r, boxes in zip(results, ref["bboxes_3d"], strict=True):
        assert torch.equal(r.pred_instances_3d.bboxes_3d.tensor, boxes)


def make_variant(name: str) -> None:
    v = VARIANTS[name]
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    cfg = make_config(name)
    model = build_model(cfg)
    frames = [
        torch.from_numpy(make_frame(rng, v["voxel_size"], v["point_cloud_range"]))
        for _ in range(N_FRAMES)
    ]
    calibrate_heads(model, frames)
    seen, results = run_mmdet3d(model, frames)
    ref = reference_dict(name, cfg, frames, seen, results)
    check_voxels(ref)
    check_outputs(ref)
    checkpoint_path = OUT_DIR / f"mmdet3d_centerpoint_{name}.pth"
    save_checkpoint(checkpoint_dict(model, cfg), str(checkpoint_path))
    torch.save(ref, OUT_DIR / f"mmdet3d_centerpoint_{name}_reference.pt")
    check_checkpoint(checkpoint_path, cfg, ref)
    torch.load(OUT_DIR / f"mmdet3d_centerpoint_{name}_reference.pt", weights_only=True)


def main() -> None:
    torch.set_num_threads(1)  # spconv's CPU scatter is not deterministic with more threads
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights lists each weight
    register_all_modules(init_default_scope=False)
    init_default_scope("mmdet3d")
    print(versions())
    for name in VARIANTS:
        print(name)
        make_variant(name)


if __name__ == "__main__":
    main()
