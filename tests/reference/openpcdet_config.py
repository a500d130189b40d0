"""OpenPCDet CenterPoint (nuScenes, res3d) settings: the two published configs and reduced ones.

Transcribed from OpenPCDet commit 8cacccec11db6f59bf6934600c9a175dae254806:
``tools/cfgs/nuscenes_models/cbgs_voxel01_res3d_centerpoint.yaml``,
``tools/cfgs/nuscenes_models/cbgs_voxel0075_res3d_centerpoint.yaml`` and
``tools/cfgs/dataset_configs/nuscenes_dataset.yaml``. Derived values (grid, sparse shape, BEV
shape, BEV channels) are computed as the upstream modules compute them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMMIT = "8cacccec11db6f59bf6934600c9a175dae254806"

# cbgs_voxel01_res3d_centerpoint.yaml lines 1-2 and 33-40
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
CLASS_NAMES_EACH_HEAD = (
    ("car",),
    ("truck", "construction_vehicle"),
    ("bus", "trailer"),
    ("barrier",),
    ("motorcycle", "bicycle"),
    ("pedestrian", "traffic_cone"),
)
# cbgs_voxel01_res3d_centerpoint.yaml lines 45-53: HEAD_ORDER and HEAD_DICT (name, out, num_conv)
HEAD_DICT = (("center", 2, 2), ("center_z", 1, 2), ("dim", 3, 2), ("rot", 2, 2), ("vel", 2, 2))

# spconv_backbone.py line 189 and base_bev_backbone.py lines 37/43/56: BatchNorm eps 1e-3;
# center_head.py line 74: the head's BatchNorm2d eps is BN_EPS, unset in the configs -> 1e-5.
BACKBONE_BN_EPS = 1e-3
HEAD_BN_EPS = 1e-5


@dataclass(frozen=True)
class CenterPointConfig:
    """What the two nuScenes CenterPoint configs set, with channel counts made configurable."""

    point_cloud_range: tuple[float, float, float, float, float, float]
    voxel_size: tuple[float, float, float]
    # nuscenes_dataset.yaml lines 74-80 (voxel0075: its yaml lines 54-60)
    max_points_per_voxel: int = 10
    max_num_voxels: int = 60000  # MAX_NUMBER_OF_VOXELS['test'] (voxel0075: 160000)
    num_point_features: int = 5  # x, y, z, intensity, timestamp (nuscenes_dataset.yaml 57-61)
    # spconv_backbone.py lines 193-234 hard-code 16, 32, 64, 128 and conv_out 128
    sparse_channels: tuple[int, int, int, int] = (16, 32, 64, 128)
    sparse_out_channels: int = 128
    # SparseBasicBlock bias: USE_BIAS is unset -> None -> ``norm_fn is not None`` -> True
    # (spconv_backbone.py lines 37-38 and 188)
    sparse_block_bias: bool = True
    # cbgs_voxel01_res3d_centerpoint.yaml lines 20-27 (BACKBONE_2D)
    layer_nums: tuple[int, ...] = (5, 5)
    layer_strides: tuple[int, ...] = (1, 2)
    num_filters: tuple[int, ...] = (128, 256)
    upsample_strides: tuple[int, ...] = (1, 2)
    num_upsample_filters: tuple[int, ...] = (256, 256)
    class_names: tuple[str, ...] = CLASS_NAMES
    class_names_each_head: tuple[tuple[str, ...], ...] = CLASS_NAMES_EACH_HEAD
    # cbgs_voxel01_res3d_centerpoint.yaml lines 42-56 (DENSE_HEAD)
    shared_conv_channel: int = 64
    head_dict: tuple[tuple[str, int, int], ...] = HEAD_DICT
    num_hm_conv: int = 2
    use_bias_before_norm: bool = True
    feature_map_stride: int = 8
    # cbgs_voxel01_res3d_centerpoint.yaml lines 68-76 (POST_PROCESSING; NMS_TYPE nms_gpu)
    score_thresh: float = 0.1
    post_center_limit_range: tuple[float, ...] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    max_obj_per_sample: int = 500
    nms_thresh: float = 0.2
    nms_pre_maxsize: int = 1000
    nms_post_maxsize: int = 83

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """(nx, ny, nz); data_processor.py lines 135-136 (np.round of range / voxel size)."""
        pcr = np.asarray(self.point_cloud_range, dtype=np.float64)
        size = np.round((pcr[3:6] - pcr[0:3]) / np.asarray(self.voxel_size)).astype(np.int64)
        return int(size[0]), int(size[1]), int(size[2])

    @property
    def sparse_shape(self) -> tuple[int, int, int]:
        """(D, H, W) = (nz + 1, ny, nx); spconv_backbone.py line 191."""
        nx, ny, nz = self.grid_size
        return nz + 1, ny, nx

    @property
    def encoded_shape(self) -> tuple[int, int, int]:
        """(D, H, W) of conv_out's output (spconv_backbone.py lines 205-234)."""
        d, h, w = self.sparse_shape
        for _ in range(2):  # conv2, conv3: k 3, s 2, p 1
            d, h, w = ((s + 2 - 3) // 2 + 1 for s in (d, h, w))
        d, h, w = (d - 3) // 2 + 1, (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1  # conv4 p (0,1,1)
        return (d - 3) // 2 + 1, h, w  # conv_out: k (3,1,1), s (2,1,1), p 0

    @property
    def num_bev_features(self) -> int:
        """Channels after HeightCompression: C * D (height_compression.py lines 21-23)."""
        return self.sparse_out_channels * self.encoded_shape[0]


def upstream_config(variant: str) -> CenterPointConfig:
    """The published configs: 'voxel01' (cbgs_voxel01_res3d_centerpoint.yaml with the dataset
    config's range and voxel, nuscenes_dataset.yaml lines 20 and 74-80) or 'voxel0075'
    (cbgs_voxel0075_res3d_centerpoint.yaml lines 6 and 54-60); the model sections of the two
    files are identical."""
    if variant == "voxel01":
        return CenterPointConfig((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.1, 0.1, 0.2))
    if variant == "voxel0075":
        return CenterPointConfig(
            (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), (0.075, 0.075, 0.2), max_num_voxels=160000
        )
    raise ValueError(f"unknown variant {variant!r}: expected 'voxel01' or 'voxel0075'")


def reduced_config(variant: str = "voxel01") -> CenterPointConfig:
    """Small grids and channels for CPU tests; every other setting as upstream.

    'voxel01': x, y in [-12.8, 12.8], z [-5, 3], voxel 0.1 -> sparse (41, 256, 256), BEV 32x32.
    'voxel0075': x in [-12, 12], y in [-9.6, 9.6], voxel 0.075 -> sparse (41, 256, 320),
    BEV H 32 x W 40 (deliberately not square, so an x/y swap cannot pass).
    Channel counts all differ from each other so a weight wired to the wrong layer fails.
    POST_CENTER_LIMIT_RANGE is the range grown by 0.5 m in x and y, z in [-4, 2]: tighter
    than upstream's (range + ~7 m, z +-10) so that it removes some random-weight candidates.
    """
    small = dict(
        sparse_channels=(8, 12, 16, 20),
        sparse_out_channels=24,
        num_filters=(16, 24),
        num_upsample_filters=(20, 12),
        shared_conv_channel=16,
    )
    if variant == "voxel01":
        return CenterPointConfig(
            (-12.8, -12.8, -5.0, 12.8, 12.8, 3.0),
            (0.1, 0.1, 0.2),
            post_center_limit_range=(-13.3, -13.3, -4.0, 13.3, 13.3, 2.0),
            **small,  # type: ignore[arg-type]
        )
    if variant == "voxel0075":
        return CenterPointConfig(
            (-12.0, -9.6, -5.0, 12.0, 9.6, 3.0),
            (0.075, 0.075, 0.2),
            max_num_voxels=160000,
            post_center_limit_range=(-12.5, -10.1, -4.0, 12.5, 10.1, 2.0),
            **small,  # type: ignore[arg-type]
        )
    raise ValueError(f"unknown variant {variant!r}: expected 'voxel01' or 'voxel0075'")
