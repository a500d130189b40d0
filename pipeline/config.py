"""Configuration: frozen dataclasses hold the defaults, one flat YAML per experiment holds the deltas.

Resolution order: dataclass defaults < YAML file < ``--set a.b=value`` overrides (last wins).
Unknown keys are errors that name the key and its nearest valid spelling. Derived values
(grid shapes, strides) are properties computed from the config, never configured.

Why one file, though it is long: each section (``data``, ``cache``, ``distill``, ...) is one
frozen dataclass that reads as a unit, its keys, defaults, ranges and checks together. One file
keeps the whole key space greppable in one place (``cache.max_frames`` is found where it is
defined), and :class:`Config`, which holds every section, is the one place a rule that spans
two sections can be checked.

This module is a leaf: it imports no other bevkd folder (only pipeline.geometry).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bevkd.pipeline.geometry import NUSCENES_CLASSES, REGRESSION_CHANNELS, BEVGrid

TEACHER_KINDS = ("lidar", "fusion", "label_encoder")
# A custom teacher in cache.teachers: "my_pkg.teachers:build" (an importable module and its
# factory) or "path/to/file.py:build" (a file loaded by path); models/protocol.py, docs/teachers.md
TEACHER_ENTRY_FORMS = "my_pkg.teachers:build (module:factory) or path/to/file.py:build"
_CUSTOM_TEACHER = re.compile(r"^(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*|[^:]+\.py):[A-Za-z_]\w*$")
# centerpoint: a CenterPoint imported from mmdet3d or OpenPCDet (``bevkd teacher import``); it
# fills the ``lidar`` teacher role (cache.lidar_checkpoint), so it is a model kind, not a role.
MODEL_KINDS = (*TEACHER_KINDS, "centerpoint", "camera", "camera_sim")

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be resolved; the message names the key and file."""


def is_custom_teacher(entry: str) -> bool:
    """Whether a ``cache.teachers`` entry names a custom teacher's factory
    (:data:`TEACHER_ENTRY_FORMS`) rather than a built-in teacher."""
    return bool(_CUSTOM_TEACHER.match(entry))


def _choice(key: str, value: Any, choices: typing.Iterable[Any]) -> None:
    """Fail at load, not later, when a choice field holds something its readers don't know."""
    choices = tuple(choices)
    if value not in choices:
        hint = _suggest(str(value), [str(c) for c in choices])
        forms = f", or a custom teacher: {TEACHER_ENTRY_FORMS}" if key == "cache.teachers" else ""
        raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}{forms}{hint}")


def _choices(key: str, values: typing.Sequence[Any], choices: typing.Iterable[Any]) -> None:
    """Every entry of a list field is a valid choice, and none repeats."""
    for value in values:
        _choice(key, value, choices)
    if len(set(values)) != len(values):
        raise ConfigError(f"{key}: {list(values)} names an entry twice")


@dataclass(frozen=True)
class Range:
    """The numbers a numeric config key admits; for a list-valued key, each of its numbers.
    NaN and infinities are never inside; ``allow`` lists sentinel values outside lo..hi
    (each with its documented meaning)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    allow: dict[float, str] = field(default_factory=dict)

    def admits(self, value: float) -> bool:
        if value in self.allow:
            return True
        if not math.isfinite(value):
            return False
        above = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return above and below

    def describe(self, integer: bool) -> str:
        """E.g. "an integer >= 1, or 0 (torch's default)", "a number in (0, 1]"."""
        kind = "an integer" if integer else "a number"
        if self.lo is not None and self.hi is not None:
            left = "(" if self.lo_open else "["
            right = ")" if self.hi_open else "]"
            text = f"{kind} in {left}{self.lo:g}, {self.hi:g}{right}"
        elif self.lo is not None:
            text = f"{kind} {'>' if self.lo_open else '>='} {self.lo:g}"
        elif self.hi is not None:
            text = f"{kind} {'<' if self.hi_open else '<='} {self.hi:g}"
        else:
            text = "any integer" if integer else "a finite number"
        return text + "".join(f", or {v:g} ({meaning})" for v, meaning in self.allow.items())


def num(
    default: T,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    allow: dict[float, str] | None = None,
) -> T:
    """A numeric field's default and its :class:`Range` (>= ge or > gt, <= le or < lt, or a
    sentinel of ``allow``), which every Config checks when it is built (the metadata is no
    part of the values, so it leaves config_sha256 alone)."""
    limits = Range(
        lo=gt if gt is not None else ge,
        hi=lt if lt is not None else le,
        lo_open=gt is not None,
        hi_open=lt is not None,
        allow=allow or {},
    )
    return field(default=default, metadata={"range": limits})


def _numbers(value: Any, key: str) -> typing.Iterator[tuple[str, float]]:
    """(key, number) for a number, or for each number in a (nested) tuple as ``key[i][j]``."""
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{key}[{i}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield key, value


def _check_ranges(section: Any, prefix: str = "") -> None:
    """Every number of ``section`` (a config dataclass, recursively) is inside its field's
    declared :class:`Range`; the first that is not is a one-line error naming its key."""
    for f in dataclasses.fields(section):
        key, value = prefix + f.name, getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_ranges(value, f"{key}.")
        elif "range" in f.metadata:
            limits: Range = f.metadata["range"]
            for where, number in _numbers(value, key):
                if not limits.admits(number):
                    raise ConfigError(
                        f"config key '{where}' = {number!r} is out of range: it must be "
                        f"{limits.describe(isinstance(number, int))}"
                    )


def section(name: str) -> typing.Callable[[type[T]], type[T]]:
    """A config section named ``name`` checks its numbers against their declared ranges
    whenever it is built (after its own checks): by a Config, by ``dataclasses.replace``, or
    alone, as the label budget builds a DataConfig. Goes under ``@dataclass``, which then
    finds the ``__post_init__`` to call."""

    def wrap(cls: type[T]) -> type[T]:
        own = cls.__dict__.get("__post_init__")

        def post_init(self: Any) -> None:
            if own is not None:
                own(self)
            _check_ranges(self, f"{name}.")

        cls.__post_init__ = post_init  # type: ignore[attr-defined]
        return cls

    return wrap


# --------------------------------------------------------------------------------------------
# Sections. Defaults are the embedded synthetic demo; configs/ hold the deltas for other runs.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
@section("data")
class DataConfig:
    """Where frames come from and how they are turned into samples."""

    format: str = "nuscenes"  # nuscenes | kitti | waymo (v2 parquet: docs/waymo.md)
    root: str = "work/demo/data"
    # A synthetic world (tiny | demo | bench) that `cache-teacher --build-missing` and `demo` may
    # generate at root when it is absent; empty for real datasets, which are never generated.
    synthetic_preset: str = "demo"
    version: str = "v1.0-trainval"
    train_split: str = "train"
    val_split: str = "val"
    unlabeled_split: str = "unlabeled"
    cameras: tuple[str, ...] = (
        "CAM_FRONT_LEFT",
        "CAM_FRONT",
        "CAM_FRONT_RIGHT",
        "CAM_BACK_LEFT",
        "CAM_BACK",
        "CAM_BACK_RIGHT",
    )
    image_size: tuple[int, int] = num((128, 224), ge=1)  # network input (H, W) after resize + crop
    lidar_sweeps: int = num(1, ge=1)  # keyframe + (lidar_sweeps - 1) earlier sweeps
    depth_stride: int = num(8, ge=1)  # LiDAR depth maps at image_size / depth_stride
    # augmentation (train only); every draw is recorded as matrices on the sample
    resize_jitter: tuple[float, float] = num((0.94, 1.06), gt=0)
    image_flip: bool = True
    photometric: bool = True
    bev_rotation_deg: float = num(22.5, ge=0, le=180)
    bev_scale: tuple[float, float] = num((0.95, 1.05), gt=0)
    bev_flip: str = "xy"  # axes that may be mirrored: "", "x" (x -> -x), "y" (y -> -y), "xy"
    # KITTI only: keep points inside the front camera's frustum, as CMKD does
    crop_points_to_camera: bool = False
    # KITTI only: the KITTI raw root (holds <date>/<date>_drive_<nnnn>_sync/); empty = <root>/raw
    kitti_raw_root: str = ""
    # KITTI only: image pixels per real-KITTI pixel (375-px-high images = 1.0); scales the
    # AP|R40 2D-height difficulty thresholds (40/25/25 px) for exports at another resolution
    kitti_pixel_scale: float = num(1.0, gt=0)
    # A label budget, read alike by train-teacher (every teacher kind) and train-student: only
    # these labelled train frames keep their GT. labeled_tokens: a file of frame tokens, one a
    # line; otherwise labeled_fraction of them, a fixed subset drawn with label_seed. The others
    # are hidden: a teacher never loads them, a student may train them as unlabelled frames.
    labeled_fraction: float = num(1.0, gt=0, le=1)
    label_seed: int = num(0, ge=0)
    labeled_tokens: str = ""
    # Students of fewer cameras than the LiDAR sees (Waymo's front camera, CMKD #12): GT boxes
    # whose centre no camera sees are dropped, and the teacher's cached targets are masked to
    # the cells some camera sees (heatmaps background, features and regressions 0, boxes
    # dropped outside), in training and in evaluation (GT and detections alike).
    fov_only: bool = False

    def __post_init__(self) -> None:
        if self.labeled_tokens and self.labeled_fraction < 1.0:
            raise ConfigError(
                "data.labeled_tokens and data.labeled_fraction both set a label budget: keep one"
            )
        _choice("data.format", self.format, ("nuscenes", "kitti", "waymo"))
        if self.format == "waymo" and self.lidar_sweeps != 1:
            raise ConfigError(
                "data.lidar_sweeps: the Waymo reader gives one sweep per frame (its fifth point "
                "feature is the elongation, not a time-lag): set 1"
            )
        _choice("data.bev_flip", self.bev_flip, ("", "x", "y", "xy", "yx"))
        if not self.cameras:
            raise ConfigError("data.cameras: name at least one camera")


@dataclass(frozen=True)
@section("grid")
class GridConfig:
    """Voxel grid of the LiDAR teacher and the BEV grid every stage shares."""

    point_cloud_range: tuple[float, float, float, float, float, float] = num(
        (-25.6, -25.6, -2.0, 25.6, 25.6, 4.0)
    )
    voxel_size: tuple[float, float, float] = num((0.2, 0.2, 0.25), gt=0)
    bev_stride: int = num(4, ge=1)  # BEV cell = voxel_size * bev_stride

    @property
    def voxel_shape(self) -> tuple[int, int, int]:
        """(nx, ny, nz) voxels covering the range."""
        lo, hi = self.point_cloud_range[:3], self.point_cloud_range[3:]
        return tuple(
            round((h - low) / s) for low, h, s in zip(lo, hi, self.voxel_size, strict=True)
        )  # type: ignore[return-value]

    @property
    def bev_cell(self) -> float:
        return self.voxel_size[0] * self.bev_stride

    @property
    def bev_grid(self) -> BEVGrid:
        """The BEV grid every stage shares: the range's x-y extent in cells of ``bev_cell``."""
        return BEVGrid.from_range(self.point_cloud_range, self.bev_cell)

    @property
    def bev_shape(self) -> tuple[int, int]:
        """(H, W) of the BEV grid: rows along y, columns along x."""
        nx, ny, _ = self.voxel_shape
        return ny // self.bev_stride, nx // self.bev_stride


@dataclass(frozen=True)
@section("model")
class ModelConfig:
    """Network sizes. One section serves every teacher and student kind; each uses its part."""

    # lidar | fusion | label_encoder (teachers) | camera (the student) | camera_sim (SimDistill's
    # simulated multi-modal camera student)
    kind: str = "lidar"
    lidar_encoder: str = "voxel"  # voxel (SECOND-style spconv) | pillar (PointPillars-style)
    max_points_per_voxel: int = num(10, ge=1)
    max_voxels: int = num(40000, ge=1)
    # input, one per stride-2 stage, z-compressing output
    sparse_channels: tuple[int, ...] = num((16, 32, 64, 64), ge=1)
    # SubMConv3d layers after each strided sparse conv (SECOND: 2)
    sparse_layers: int = num(1, ge=0)
    # channels of the distilled BEV feature (lidar_bev); demo-sized for CPU
    bev_channels: int = num(64, ge=1)
    bev_backbone_layers: tuple[int, ...] = num((2, 2), ge=0)
    head_channels: int = num(32, ge=1)
    camera_bev_channels: int = num(64, ge=1)
    image_backbone_channels: tuple[int, ...] = num((32, 64, 128), ge=1)
    depth_bins: tuple[float, float, float] = num((1.0, 40.0, 1.0), gt=0)  # (min, max, step) metres
    depth_loss_weight: float = num(3.0, ge=0)  # camera branch depth BCE (BEVDepth's factor)
    # LabelDistill: 256; 64 keeps the demo a few CPU minutes
    label_encoder_channels: int = num(64, ge=1)
    checkpoint: str = ""  # a teacher checkpoint to load (label encoder: the frozen LiDAR teacher)
    init_from: str = ""  # a trained teacher whose matching weights initialise this one (fusion <- lidar, as BEVFusion)

    def __post_init__(self) -> None:
        _choice("model.kind", self.kind, MODEL_KINDS)
        _choice("model.lidar_encoder", self.lidar_encoder, ("voxel", "pillar"))


NUSCENES_TASKS: tuple[tuple[str, ...], ...] = (
    ("car",),
    ("truck", "construction_vehicle"),
    ("bus", "trailer"),
    ("barrier",),
    ("motorcycle", "bicycle"),
    ("pedestrian", "traffic_cone"),
)
# (kind, in channels, out channels, padding z, y, x, bias 0/1); kind: subm (3x3x3 submanifold
# conv), down (3x3x3 strided sparse conv, stride 2), basic (residual block of two subm convs),
# out (the (3, 1, 1) / (2, 1, 1) z-compressing conv, padding 0).
SparseLayer = tuple[str, int, int, int, int, int, int]
SPARSE_LAYER_KINDS = ("subm", "down", "basic", "out")


def _sparse_layers(
    stages: tuple[tuple[int, ...], ...], last_padding: tuple[int, int, int], out: int
) -> tuple[SparseLayer, ...]:
    """mmdet3d's SparseEncoder, ``block_type='basicblock'``: the input subm conv to
    ``stages[0][0]``, then per stage its basic blocks and (all but the last) a strided conv to
    the next width; the third strided conv has ``last_padding``, as the nuScenes configs."""
    layers: list[SparseLayer] = [("subm", 5, stages[0][0], 1, 1, 1, 0)]
    for i, widths in enumerate(stages):
        for j, width in enumerate(widths):
            if j == len(widths) - 1 and i != len(stages) - 1:
                pad = last_padding if i == 2 else (1, 1, 1)
                layers.append(("down", widths[j - 1], width, *pad, 0))
            else:
                layers.append(("basic", width, width, 1, 1, 1, 0))
    layers.append(("out", stages[-1][-1], out, 0, 0, 0, 0))
    return tuple(layers)


@dataclass(frozen=True)
@section("centerpoint")
class CenterPointConfig:
    """An imported CenterPoint (``model.kind: centerpoint``): the architecture and test-time
    post-processing of an mmdet3d 1.x or OpenPCDet CenterPoint, as ``bevkd teacher import``
    reads them from the foreign checkpoint. The defaults are mmdet3d's nuScenes voxel-0.1
    model (``centerpoint_voxel01_second_secfpn_head-circlenms``); the grid is ``grid``
    (voxel size, point range, ``bev_stride`` = the head's ``out_size_factor``)."""

    source: str = "mmdet3d"  # mmdet3d | openpcdet: box conventions and post-processing
    # the frame its points and boxes live in: lidar (the sensor's, as both frameworks' nuScenes
    # models: points go ego -> LiDAR, maps and boxes come back to the ego grid) | ego
    input_frame: str = "lidar"
    encoder: str = "voxel"  # voxel (sparse 3D convs) | pillar (PillarFeatureNet + scatter)
    point_features: int = num(5, ge=3)  # x, y, z, intensity, time-lag
    max_points_per_voxel: int = num(10, ge=1)
    max_voxels: int = num(120000, ge=1)  # at test time
    # (z, y, x) of the sparse tensor
    sparse_shape: tuple[int, int, int] = num((41, 1024, 1024), ge=1)
    sparse_layers: tuple[SparseLayer, ...] = num(
        _sparse_layers(((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)), (0, 1, 1), 256),
        ge=0,  # channels >= 1 in practice; paddings and the bias flag may be 0
    )
    sparse_bn_eps: float = num(1e-3, gt=0)
    # pillar encoder (PillarFeatureNet): PFN widths and the point decorations
    pillar_channels: tuple[int, ...] = num((64,), ge=1)
    pillar_cluster_center: bool = True
    pillar_voxel_center: bool = True
    pillar_distance: bool = False
    pillar_legacy: bool = False  # mmdet3d's legacy=True: centre offsets overwrite raw x, y, z
    # 2D backbone (SECOND) and neck (SECONDFPN)
    backbone_channels: tuple[int, ...] = num((128, 256), ge=1)
    backbone_layers: tuple[int, ...] = num((5, 5), ge=0)
    backbone_strides: tuple[int, ...] = num((1, 2), ge=1)
    neck_channels: tuple[int, ...] = num((256, 256), ge=1)
    neck_strides: tuple[float, ...] = num((1.0, 2.0), gt=0)  # < 1: a strided conv; > 1: a deconv
    neck_conv_for_no_stride: bool = True  # stride 1 as a 1x1 conv (mmdet3d) or deconv (OpenPCDet)
    bn_eps_2d: float = num(1e-3, gt=0)
    # CenterHead: class groups, one task head each
    tasks: tuple[tuple[str, ...], ...] = NUSCENES_TASKS
    shared_channels: int = num(64, ge=1)
    head_channels: int = num(64, ge=1)
    head_convs: int = num(2, ge=1)  # convs per regression branch, the last with bias
    heatmap_convs: int = num(2, ge=1)
    final_kernel: int = num(3, ge=1)
    head_conv_bias: bool = False  # bias on the convs before a norm (mmdet3d bias='auto': no)
    head_bn_eps: float = num(1e-5, gt=0)
    rotation_order: str = "sin_cos"  # mmdet3d (sin, cos); OpenPCDet (cos, sin)
    # test-time decoding, per task
    max_per_task: int = num(500, ge=1)
    score_threshold: float = num(0.1, ge=0, le=1)
    post_center_range: tuple[float, float, float, float, float, float] = num(
        (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    )
    nms: str = "circle"  # circle (centre distance) | rotate (rotated BEV IoU)
    # circle, per task
    min_radius: tuple[float, ...] = num((4.0, 12.0, 10.0, 1.0, 0.85, 0.175), gt=0)
    nms_iou: float = num(0.2, ge=0, le=1)  # rotate
    pre_nms: int = num(1000, ge=1)
    post_nms: int = num(83, ge=1)

    def __post_init__(self) -> None:
        _choice("centerpoint.source", self.source, ("mmdet3d", "openpcdet"))
        _choice("centerpoint.encoder", self.encoder, ("voxel", "pillar"))
        _choice("centerpoint.input_frame", self.input_frame, ("lidar", "ego"))
        _choice("centerpoint.nms", self.nms, ("circle", "rotate"))
        _choice("centerpoint.rotation_order", self.rotation_order, ("sin_cos", "cos_sin"))
        for i, layer in enumerate(self.sparse_layers):
            _choice(f"centerpoint.sparse_layers[{i}]", layer[0], SPARSE_LAYER_KINDS)
        if self.nms == "circle" and len(self.min_radius) != len(self.tasks):
            raise ConfigError(
                f"centerpoint.min_radius has {len(self.min_radius)} values for "
                f"{len(self.tasks)} tasks; circle NMS needs one per task"
            )
        n = len(self.backbone_channels)
        if not (len(self.backbone_layers) == len(self.backbone_strides) == n
                == len(self.neck_channels) == len(self.neck_strides)):  # fmt: skip
            raise ConfigError(
                "centerpoint.backbone_channels, backbone_layers, backbone_strides, "
                "neck_channels and neck_strides need one entry per backbone stage"
            )

    @property
    def classes(self) -> tuple[str, ...]:
        """The class of each heatmap channel: the tasks' classes in task order."""
        return tuple(c for task in self.tasks for c in task)


@dataclass(frozen=True)
@section("head")
class HeadConfig:
    """CenterPoint head targets and decoding."""

    gaussian_overlap: float = num(0.1, gt=0, lt=1)
    min_radius: int = num(2, ge=0)
    score_threshold: float = num(0.1, ge=0, le=1)
    nms_iou: float = num(0.2, ge=0, le=1)
    max_detections: int = num(300, ge=1)
    heatmap_weight: float = num(1.0, ge=0)
    regression_weight: float = num(0.25, ge=0)
    # per-channel L1 weights in REGRESSION_CHANNELS order (CenterPoint: velocity at 0.2)
    code_weights: tuple[float, ...] = num((1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2), ge=0)
    pre_nms_top_k: int = num(500, ge=1)  # candidates taken from the heatmap peaks before NMS

    def __post_init__(self) -> None:
        if len(self.code_weights) != len(REGRESSION_CHANNELS):
            raise ConfigError(
                f"head.code_weights has {len(self.code_weights)} values; it needs one per "
                f"regression channel ({', '.join(REGRESSION_CHANNELS)})"
            )


@dataclass(frozen=True)
@section("train")
class TrainConfig:
    """One training run: optimiser, schedule, checkpoints."""

    out_dir: str = "work/demo/teacher_lidar"
    epochs: int = num(20, ge=1)
    batch_size: int = num(4, ge=1)
    lr: float = num(2e-3, gt=0)
    weight_decay: float = num(1e-2, ge=0)
    grad_clip: float = num(35.0, gt=0)
    grad_accum: int = num(1, ge=1)
    amp: bool = True  # only takes effect on CUDA
    num_workers: int = num(2, ge=0)
    seed: int = num(0, ge=0)
    log_every: int = num(10, ge=1)
    checkpoint_every: int = num(1, ge=1)  # epochs
    keep_checkpoints: bool = False  # also keep epoch_NNN.pt beside last.pt
    # epochs; 0 evaluates only at the end
    eval_every: int = num(0, ge=1, allow={0: "only at the end"})
    # the validation number best.pt is chosen by: a key of metrics.json, dotted for nested ones
    # (nuScenes "NDS" or "mAP"; KITTI e.g. "ap.car.bev.moderate"); higher is better
    best_metric: str = "NDS"
    # DDP's find_unused_parameters: only for models with branches a step may skip (it costs a
    # graph traversal per step); every bevkd loss keeps all parameters in the graph
    find_unused_parameters: bool = False
    # torch intra-op threads of a training process; 0 = torch's default
    torch_threads: int = num(0, ge=1, allow={0: "torch's default"})
    # train-student only: "cached" reads the teacher fields from student.store; "online" runs
    # the teachers that made the store inside every step (the seeds' way; stages/online_teacher)
    targets: str = "cached"

    def __post_init__(self) -> None:
        _choice("train.targets", self.targets, ("cached", "online"))


@dataclass(frozen=True)
@section("io")
class IOConfig:
    """How requests to an object store (S3, GCS) retry transient failures: 500, 503 SlowDown,
    reset connections, cut or damaged bodies (bevkd.storage.retry). Local stores never retry."""

    # tries per request, the first included (each may hold the client library's own retries)
    retry_attempts: int = num(10, ge=1)
    # seconds one request may keep failing before the run stops, naming the object and frame
    retry_deadline_s: float = num(300.0, gt=0)


@dataclass(frozen=True)
@section("store")
class StoreConfig:
    """Where and how stage one writes the teacher store."""

    url: str = "work/demo/teacher.zarr"
    shard_size: int = num(8, ge=1)  # frames per shard: the unit of work and of resumption
    codecs: tuple[tuple[str, str], ...] = ()  # (field, codec) overrides of the per-kind defaults
    storage_options: tuple[tuple[str, str], ...] = ()  # fsspec options, e.g. endpoint_url


@dataclass(frozen=True)
@section("cache")
class CacheConfig:
    """Stage one: which teachers run over which frames."""

    # lidar | fusion | label_encoder, or a custom teacher: my_pkg.teachers:build or
    # path/to/file.py:build (its factory; models/protocol.py, docs/teachers.md)
    teachers: tuple[str, ...] = ("lidar", "label_encoder")
    # teacher -> the config that trains it, for `cache-teacher --build-missing` (demo runs)
    teacher_configs: tuple[tuple[str, str], ...] = (
        ("lidar", "configs/demo/lidar_teacher.yaml"),
        ("fusion", "configs/demo/fusion_teacher.yaml"),
        ("label_encoder", "configs/demo/label_encoder.yaml"),
    )
    lidar_checkpoint: str = "work/demo/teacher_lidar/best.pt"
    fusion_checkpoint: str = ""
    label_encoder_checkpoint: str = "work/demo/teacher_label/best.pt"
    # custom teacher entry -> the checkpoint path its factory is given ("" when not listed)
    teacher_checkpoints: tuple[tuple[str, str], ...] = ()
    splits: tuple[str, ...] = ("train", "val", "unlabeled")
    # heatmaps are stored as sigmoid probabilities (what CMKD, LabelDistill and SimDistill consume;
    # an 8-bit background of ~0 compresses well) or as the head's raw logits
    heatmap_as: str = "probabilities"
    # 1 = the BEV grid; 2 = half resolution too
    lidar_bev_scales: tuple[int, ...] = num((1,), ge=1, le=2)
    # also write lidar_bev_pre: the LiDAR teacher's map-to-BEV output before its 2D backbone
    # (encoder channels, on the BEV grid), the layer CMKD distils (distill.bev_layer=map_to_bev)
    lidar_bev_pre: bool = False
    scheduler: str = ""  # a dask scheduler address; empty starts a LocalCluster
    # LocalCluster worker processes; 0 = no dask, run in this process
    n_workers: int = num(1, ge=1, allow={0: "no dask"})
    # Shard tasks in flight per process; 0 = 2 with CUDA, else 1. Their teacher forwards take
    # turns on the device, so with 2 one task loads or writes while the other runs the
    # teachers: right for a GPU; on CPU cores the forward's threads would be preempted.
    threads_per_worker: int = num(0, ge=1, allow={0: "2 with CUDA, else 1"})
    # torch intra-op threads per process; 0 = the cores / n_workers
    torch_threads: int = num(0, ge=1, allow={0: "the cores / n_workers"})
    retries: int = num(2, ge=0)
    max_frames: int = num(0, ge=1, allow={0: "every frame"})  # 0 = all

    def __post_init__(self) -> None:
        custom = [t for t in self.teachers if is_custom_teacher(t)]
        _choices("cache.teachers", self.teachers, (*TEACHER_KINDS, *custom))
        if not self.teachers:
            raise ConfigError(f"cache.teachers: name at least one of {list(TEACHER_KINDS)}")
        for entry, _ in self.teacher_checkpoints:
            if entry not in self.teachers or not is_custom_teacher(entry):
                raise ConfigError(
                    f"cache.teacher_checkpoints: {entry!r} is not a custom teacher entry of "
                    f"cache.teachers {list(self.teachers)}"
                )
        _choices("cache.splits", self.splits, ("train", "val", "unlabeled"))
        _choice("cache.heatmap_as", self.heatmap_as, ("probabilities", "logits"))
        _choices("cache.lidar_bev_scales", self.lidar_bev_scales, (1, 2))
        for teacher, _ in self.teacher_configs:
            _choice("cache.teacher_configs", teacher, TEACHER_KINDS)
        if self.max_frames < 0:
            raise ConfigError(
                f"cache.max_frames: {self.max_frames}; use 0 for every frame or a positive count"
            )


@dataclass(frozen=True)
@section("student")
class StudentConfig:
    """Stage two: which store a camera student reads, which frames, which recipe."""

    # the distillation recipe (distill.recipes.RECIPES): baseline | cmkd | labeldistill |
    # simdistill | focal | pseudo_label, or several joined by "+" (cmkd+pseudo_label)
    recipe: str = "baseline"
    store: str = "work/demo/teacher.zarr"  # the teacher store (local path or fsspec URL)
    storage_options: tuple[tuple[str, str], ...] = ()  # fsspec options, e.g. endpoint_url
    # add the unlabeled split's frames (has_label false): only teacher terms apply to them
    unlabeled: bool = False
    # BEV feature channels at stride 1 (stride 2 has twice as many); they must match the
    # store's lidar_bev / lidar_bev_s2, which the distilled recipes compare them against
    bev_channels: int = num(64, ge=1)
    bev_layers: tuple[int, ...] = num((2, 2), ge=0)
    # a student checkpoint whose weights start this run (CMKD's phase 2 starts from phase 1)
    init_from: str = ""
    # a LiDAR teacher checkpoint whose 2D backbone, neck and head are copied into the student's
    # BEV encoder, neck and head, after init_from (CMKD's phase 2 starts from the teacher's BEV
    # backbone and head); every tensor must fit (models/checkpoint.py init_from_teacher)
    init_from_teacher: str = ""
    # Under a label budget (data.labeled_fraction / data.labeled_tokens), a store whose teachers
    # saw the GT of frames this student hides is refused, unless this says so: the run is then
    # an "oracle teacher" run, labelled so in its log, checkpoint and every table
    teacher_saw_hidden_labels: bool = False
    # labelled frames in every batch when unlabelled frames train too (0: all frames shuffled
    # together); e.g. 2 of batch 4, as semi-supervised detectors train (datasets/sampler.py)
    labelled_per_batch: int = num(0, ge=1, allow={0: "all frames shuffled together"})
    # train.targets=online: teacher -> checkpoint, where it is not at the path the store's
    # provenance records (its sha256 must still be the recorded one)
    teacher_checkpoints: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
@section("distill")
class DistillConfig:
    """Weights and options of the distillation terms.

    A weight left None takes the default of the recipe that reads it (each recipe's
    ``DEFAULTS``, its paper's value: distill/recipes.py ``with_recipe_defaults``; ``bevkd config
    show`` prints them filled in): CMKD's 50 means nothing to LabelDistill or SimDistill.
    """

    # "gt+kd": GT detection terms on labelled frames plus KD (CMKD-MV); "kd": pure teacher
    # mimicry with no GT on any frame (the released CMKD KITTI code)
    mode: str = "gt+kd"
    # BEV feature term (recipe default: CMKD-MV 50, LabelDistill 0.3; CMKD KITTI 32)
    bev_weight: float | None = num(None, ge=0)
    # CMKD's BEV mask. "none": the full map (CMKD's default); "teacher": cells where the
    # teacher's heatmap exceeds bev_mask_threshold in some class; "gt": GT-gaussian cells
    # (labelled frames only)
    bev_mask: str = "none"
    # CMKD's released code has no teacher-heatmap mask (Cc-Hy/CMKD pcdet/models/detectors/
    # cmkd.py: gt_mask, nonzero_mask); 0.1 is the teacher confidence at which its soft box
    # regression keeps a cell (center_head_soft.py, anchor_head_single_cmkd_v2.py)
    bev_mask_threshold: float = num(0.1, ge=0, le=1)
    bev_scales: tuple[int, ...] = num((1,), ge=1, le=2)  # 1: lidar_bev; 2: lidar_bev_s2 as well
    # CMKD's BEV term at the teacher's "backbone" output (lidar_bev vs the student's bev) or at
    # its "map_to_bev" output before the backbone (lidar_bev_pre vs the student's camera_bev,
    # the paper's layer; the store needs cache.lidar_bev_pre, the student
    # model.camera_bev_channels = the teacher's encoder channels; one scale only)
    bev_layer: str = "backbone"
    response: bool = True  # the heatmap QFL and soft box terms; false = CMKD's phase 1
    # heatmap KD (recipe default: CMKD-MV's QFL 0.2, LabelDistill's focal 1, SimDistill's
    # QFL 0.25; CMKD KITTI 1-2)
    heatmap_weight: float | None = num(None, ge=0)
    qfl_beta: float = num(2.0, ge=0)  # CMKD's QFL (loss_utils.py QualityFocalLoss, beta 2)
    # CMKD's QFL normaliser counts the (class, cell) entries of the batch whose teacher
    # probability exceeds it: 0.5 in CMKD-MV (bevdet.py CMKD_BEVDet.forward_train), the default
    # here as the demo and nuScenes configs are nuScenes-style; 0.3 in CMKD's CenterPoint head
    # (center_head_soft.py, configs/kitti); 0.1 in its anchor heads (per frame)
    qfl_threshold: float = num(0.5, ge=0, le=1)
    # box KD (recipe default: CMKD-MV 50, LabelDistill 0.25, SimDistill 0.25; CMKD KITTI's
    # CenterPoint head 4 with regression_normaliser "masked")
    regression_weight: float | None = num(None, ge=0)
    # CMKD's soft box regression keeps cells whose summed teacher probability exceeds it
    # (center_head_soft.py, anchor_head_single_cmkd_v2.py: 0.1; CMKD-MV keeps every cell)
    regression_threshold: float = num(0.1, ge=0)
    # ... and divides by "cells": every cell of the batch, channels averaged within each
    # CenterPoint head (CMKD-MV, for its weight 50); or "masked": the kept cells, channels
    # summed (CMKD's center_head_soft.py, for its weight 4). distill/losses.py soft_regression.
    regression_normaliser: str = "cells"
    # the teacher fields: lidar (heatmap, box_regression) or fusion (fusion_heatmap, ...)
    teacher: str = "lidar"
    # LabelDistill: the label-embedding term (its LiDAR term is bev_weight; response: the
    # heatmap_weight gaussian focal and regression_weight L1 terms). Paper: 0.3, 0.3, 1, 0.25
    # (sanmin0312/LabelDistill exps/nuscenes/labeldistill/LabelDistill_r50_128x128_e24_*.py).
    label_weight: float = num(0.3, ge=0)
    # LabelDistill on unlabelled frames (bevkd's: the paper has none): the LiDAR feature term's
    # mask is the teacher's heatmap where it exceeds this; 0.3 is the probability CMKD's
    # CenterPoint head counts as a positive (center_head_soft.py), above the soft floor
    unlabelled_mask_threshold: float = num(0.3, ge=0, le=1)
    # SimDistill: IMD (camera BEV), CMD (simulated-LiDAR BEV vs cmd_field, GT-gaussian mask),
    # MMD-F (fused BEV); MMD-P is heatmap_weight (QFL) + regression_weight (SmoothL1 at GT
    # centres). Paper: 1, 100, 1, 0.25, 0.25 (ViTAE-Transformer/SimDistill
    # mmdet3d/models/fusion_models/bevfusion.py, heads/bbox/centerpoint.py).
    imd_weight: float = num(1.0, ge=0)
    cmd_weight: float = num(100.0, ge=0)
    cmd_field: str = "fusion_lidar_bev"  # or lidar_bev (the LiDAR teacher's)
    fused_weight: float = num(1.0, ge=0)
    # SimDistill on unlabelled frames (bevkd's: the paper has none): CMD's mask is the
    # teacher's heatmap where it exceeds this; 0.1 is the probability SimDistill's MMD-P QFL
    # counts as a positive (centerpoint.py get_cls_layer_loss)
    cmd_mask_threshold: float = num(0.1, ge=0, le=1)
    # FocalDistiller for bevkd: instance regions are the teacher's cached boxes scoring above
    # region_score; masked generative distillation there (mgd_weight; mgd_mask_ratio of the
    # student's cells dropped) and L1 at 9 points per box (point_weight)
    region_score: float = num(0.3, ge=0, le=1)
    mgd_weight: float = num(1.0, ge=0)
    mgd_mask_ratio: float = num(0.65, ge=0, lt=1)
    point_weight: float = num(1.0, ge=0)
    # Pseudo-labels (pseudo_label recipe): the teacher's cached boxes (pseudo_boxes: boxes or
    # fusion_boxes) scoring at or above pseudo_threshold (per class: pseudo_class_thresholds)
    # as detection targets on frames without GT (and on labelled ones if pseudo_on_labelled);
    # pseudo_soft weights each box by its score
    pseudo_boxes: str = "boxes"
    pseudo_threshold: float = num(0.3, ge=0, le=1)
    pseudo_class_thresholds: tuple[tuple[str, float], ...] = num((), ge=0, le=1)
    pseudo_soft: bool = False
    pseudo_on_labelled: bool = False
    pseudo_weight: float = num(1.0, ge=0)

    def __post_init__(self) -> None:
        _choice("distill.pseudo_boxes", self.pseudo_boxes, ("boxes", "fusion_boxes"))
        _choice("distill.cmd_field", self.cmd_field, ("fusion_lidar_bev", "lidar_bev"))
        _choice("distill.mode", self.mode, ("gt+kd", "kd"))
        _choice("distill.bev_mask", self.bev_mask, ("none", "teacher", "gt"))
        _choice("distill.regression_normaliser", self.regression_normaliser, ("cells", "masked"))
        _choice("distill.teacher", self.teacher, ("lidar", "fusion"))
        _choices("distill.bev_scales", self.bev_scales, (1, 2))
        _choice("distill.bev_layer", self.bev_layer, ("backbone", "map_to_bev"))
        if self.bev_layer == "map_to_bev" and 2 in self.bev_scales:
            raise ConfigError(
                "distill.bev_layer=map_to_bev distils one map (lidar_bev_pre, on the BEV grid); "
                f"distill.bev_scales is {list(self.bev_scales)}: set it to [1]"
            )


@dataclass(frozen=True)
@section("eval")
class EvalConfig:
    eval_set: str = "val"
    render_curves: bool = False
    # nuScenes eval radius in metres; 0 = the devkit's per-class ranges capped at the BEV grid
    class_range: float = num(0.0, gt=0, allow={0: "the devkit's per-class ranges"})
    # KITTI AP|R40: "exact" (the definition, at every score threshold) or "devkit" (the
    # official devkit's 41 sampled thresholds, bit for bit: compare with published tables)
    kitti_sampling: str = "exact"
    # nuScenes: a file of sample tokens (one a line) of eval_set to score alone, e.g. the frames
    # a label budget hid; the devkit's splits are lists of scenes, so this filters its GT and
    # predictions after loading them. Empty: every sample of eval_set
    sample_tokens: str = ""

    def __post_init__(self) -> None:
        _choice("eval.kitti_sampling", self.kitti_sampling, ("exact", "devkit"))


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of one experiment."""

    name: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    centerpoint: CenterPointConfig = field(default_factory=CenterPointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    io: IOConfig = field(default_factory=IOConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    classes: tuple[str, ...] = NUSCENES_CLASSES


# --------------------------------------------------------------------------------------------
# Mechanism
# --------------------------------------------------------------------------------------------


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, strictly."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(
            _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError("; ".join(errors))
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a (partial) mapping; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            if (renamed := RENAMED_KEYS.get(path, "")) is None or renamed:
                new = (renamed,) if isinstance(renamed, str) else renamed or ()
                now = " and ".join(f"'{n}'" for n in new) or "no key: it was removed"
                raise ConfigError(f"config key '{path}' is now {now}")
            raise ConfigError(f"unknown config key '{path}'{_suggest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


# Keys a recorded config (in a checkpoint, a store's provenance) may hold from an earlier
# bevkd: old dotted key -> its new key, or None where the key is gone (its value is dropped).
# Only recorded configs are upgraded; a YAML file or --set with an old key is an error that
# names the new one.
RENAMED_KEYS: dict[str, str | tuple[str, ...] | None] = {
    "student.labeled_fraction": "data.labeled_fraction",
    "student.label_seed": "data.label_seed",
    # one threshold for four uses until issue 24: a recorded value goes to each of them. (Its
    # soft box term was then a confidence-weighted mean, which no key expresses now.)
    "distill.heatmap_threshold": (
        "distill.qfl_threshold", "distill.bev_mask_threshold",
        "distill.unlabelled_mask_threshold", "distill.cmd_mask_threshold",
    ),
}  # fmt: skip


def _pop(data: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    *parents, leaf = dotted.split(".")
    node: Any = data
    for part in parents:
        node = node.get(part)
        if not isinstance(node, dict):
            return False, None
    return (True, node.pop(leaf)) if leaf in node else (False, None)


def upgrade_recorded(data: dict[str, Any]) -> dict[str, Any]:
    """A recorded config with :data:`RENAMED_KEYS` moved to their new places (a copy)."""
    out = json.loads(json.dumps(data))
    for old, new in RENAMED_KEYS.items():
        found, value = _pop(out, old)
        targets = () if new is None else (new,) if isinstance(new, str) else new
        for target in targets if found else ():
            *parents, leaf = target.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node.setdefault(leaf, value)
    return out


def recorded_config(data: dict[str, Any]) -> Config:
    """The :class:`Config` a checkpoint or store recorded, written by this or an earlier bevkd."""
    return from_dict(Config, upgrade_recorded(data))


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj


def _merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{'a': {'b': {'c': value}}}``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key.sub=value, got '{text}'")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (plain
    YAML keeps the last one silently, so a config could hold two values of one setting)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: key '{key}' is given twice in one "
                    f"mapping (first on line {seen[key]})"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Resolve defaults < YAML file < overrides into a frozen :class:`Config`."""
    delta: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        delta = loaded
    for text in overrides:
        delta = _merge(delta, parse_override(text))
    try:
        return from_dict(Config, delta)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None


def config_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_sha256(cfg: Config) -> str:
    """Hash of the resolved config (canonical JSON), stored beside every output."""
    return _canonical_sha(to_dict(cfg))


# Keys added to the config after results were recorded against it, oldest first, each with a
# default that keeps the behaviour from before it existed. A record made before a key existed
# is a record of today's config with that key at its default (:func:`config_sha256_variants`),
# so adding a key does not orphan the run ledger's results.
ADDED_KEYS: tuple[str, ...] = (
    "cache.teacher_checkpoints",  # the Teacher protocol (custom teachers' checkpoints)
    "centerpoint",  # imported CenterPoints (model.kind: centerpoint)
    "io",  # object-store retries (issue 26)
    "data.fov_only",  # camera field-of-view students (issue 27, Waymo)
)


def _canonical_sha(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def config_sha256_variants(cfg: Config) -> set[str]:
    """:func:`config_sha256` of ``cfg``, and the sha256 the same config had before each
    :data:`ADDED_KEYS` entry existed (the keys added since left out), as long as ``cfg`` leaves
    those keys at their defaults: the hashes a record of this config may carry."""
    data, defaults = to_dict(cfg), to_dict(Config())
    out = {_canonical_sha(data)}
    older = json.loads(json.dumps(data))
    for key in reversed(ADDED_KEYS):
        parts = key.split(".")
        node, default = older, defaults
        for part in parts[:-1]:
            node, default = node[part], default[part]
        if node.get(parts[-1]) != default.get(parts[-1]):
            break  # set away from its default: no older config meant this
        del node[parts[-1]]
        out.add(_canonical_sha(older))
    return out


def save_resolved(cfg: Config, out_dir: str | Path) -> Path:
    """Write ``config.yaml`` and ``config.sha256`` into ``out_dir``; returns the YAML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config_yaml(cfg))
    (out / "config.sha256").write_text(config_sha256(cfg) + "\n")
    return out / "config.yaml"


def with_overrides(cfg: Config, overrides: typing.Sequence[str]) -> Config:
    """``cfg`` with ``key.sub=value`` overrides applied (the same rules as ``--set``)."""
    data = to_dict(cfg)
    for text in overrides:
        data = _merge(data, parse_override(text))
    return from_dict(Config, data)
