"""Import a CenterPoint trained in another framework (mmdet3d 1.x, OpenPCDet) as a bevkd
teacher checkpoint (``bevkd teacher import``).

The foreign checkpoint's weights are renamed onto :class:`~bevkd.models.centerpoint.
CenterPointTeacher` (a table of patterns per framework, below), sparse-conv kernels are
permuted from the layout the user declares, and every incompatibility is collected and
reported at once: missing and unexpected keys, shapes that differ, a grid that does not
divide, classes the dataset does not have, an mmdet3d checkpoint from before 1.0.

Where the architecture comes from:
- **mmdet3d**: the checkpoint's ``meta.cfg`` (the config text mmengine saves), read by a small
  literal evaluator (:func:`read_mmengine_config`), never executed;
- **OpenPCDet** (its checkpoints carry no config), or mmdet3d without ``meta.cfg``: the
  user's bevkd config, its ``grid`` and ``centerpoint`` sections (``configs/foreign/`` has
  the published nuScenes models'); every tensor's shape is then checked against it.

Sparse-conv kernels: spconv 1.x and mmcv store (kD, kH, kW, Cin, Cout), spconv 2.x
(Cout, kD, kH, kW, Cin). The checkpoint's own version metadata is not trusted (mmdet3d's
load hook mis-permutes some published checkpoints: mmdetection3d #2584, #3130): the user
declares ``kernel_layout``; left to ``auto``, a kernel whose shape fits only one layout is
read in that one, and a kernel that fits both (e.g. (3, 3, 3, 3, 3)) is an error asking for
the declaration.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from bevkd.models.checkpoint import unreadable_reason
from bevkd.pipeline.config import (
    CenterPointConfig,
    Config,
    ConfigError,
    GridConfig,
    SparseLayer,
)
from bevkd.pipeline.errors import BevkdError
from bevkd.pipeline.provenance import sha256_file

SOURCES = ("mmdet3d", "openpcdet")
KERNEL_LAYOUTS = ("auto", "spconv1", "spconv2")


class ImportProblem(BevkdError):
    """A foreign checkpoint that does not fit the teacher it is imported as; lists every
    problem found."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n  - ".join(problems)
        super().__init__(f"{path}: cannot import ({len(problems)} problem(s)):\n  - {lines}")


# ------------------------------------------------------------------------------------------
# Reading the foreign file and its config
# ------------------------------------------------------------------------------------------


def load_foreign(path: str | Path) -> dict[str, Any]:
    """The foreign checkpoint's payload (a dict), read on CPU."""
    path = Path(path)
    if not path.is_file():
        raise BevkdError(f"foreign checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling raises many types; all mean "not a checkpoint"
        reason = unreadable_reason(path, exc)
        raise BevkdError(f"{path} cannot be read as a torch checkpoint: {reason}") from exc
    if not isinstance(payload, dict):
        raise BevkdError(f"{path} holds a {type(payload).__name__}, not a checkpoint dict")
    return payload


def weights_of(
    payload: Mapping[str, Any], source: str, path: str | Path
) -> dict[str, torch.Tensor]:
    """The state dict: mmdet3d's ``state_dict``, OpenPCDet's ``model_state``."""
    key = {"mmdet3d": "state_dict", "openpcdet": "model_state"}[source]
    state = payload.get(key)
    if not isinstance(state, Mapping):
        found = ", ".join(sorted(str(k) for k in payload)) or "nothing"
        raise BevkdError(
            f"{path}: no '{key}' in the checkpoint (found {found}); is it a {source} checkpoint?"
        )
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


# The only callables a config may use: pure builtins of literals.
_CALLS: dict[str, Callable[..., Any]] = {
    "dict": dict, "list": list, "tuple": tuple, "sum": sum, "min": min, "max": max,
    "len": len, "abs": abs, "round": round, "int": int, "float": float,
}  # fmt: skip


def _literal(node: ast.AST, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        items = [_literal(e, names) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        return {_literal(k, names): _literal(v, names) for k, v in zip(node.keys, node.values, strict=True) if k is not None}  # fmt: skip
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand, names)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
        a, b = _literal(node.left, names), _literal(node.right, names)
        ops: dict[type, Callable[[Any, Any], Any]] = {
            ast.Add: lambda x, y: x + y, ast.Sub: lambda x, y: x - y,
            ast.Mult: lambda x, y: x * y, ast.Div: lambda x, y: x / y,
        }  # fmt: skip
        return ops[type(node.op)](a, b)
    if isinstance(node, ast.Subscript):
        value = _literal(node.value, names)
        if isinstance(node.slice, ast.Slice):
            parts = [None if p is None else _literal(p, names) for p in (node.slice.lower, node.slice.upper, node.slice.step)]  # fmt: skip
            return value[slice(*parts)]
        return value[_literal(node.slice, names)]
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise ValueError(f"unknown name {node.id!r}")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
        args = [_literal(a, names) for a in node.args]
        kwargs = {k.arg: _literal(k.value, names) for k in node.keywords if k.arg is not None}
        return _CALLS[node.func.id](*args, **kwargs)
    raise ValueError(f"not a literal: {ast.dump(node)[:80]}")


def read_mmengine_config(text: str) -> dict[str, Any]:
    """The top-level assignments of an mmengine config text (``meta.cfg``), evaluated as
    literals (``dict(...)``, lists, numbers, strings, earlier names); nothing is executed.
    Assignments that are not literals (imports, lambdas) are skipped."""
    tree = ast.parse(text)
    names: dict[str, Any] = {}
    for stmt in tree.body:
        if (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
        ):
            try:
                names[stmt.targets[0].id] = _literal(stmt.value, names)
            except (ValueError, TypeError, KeyError, ZeroDivisionError):
                continue
    return names


def mmdet3d_version(payload: Mapping[str, Any]) -> str | None:
    meta = payload.get("meta") or {}
    version = meta.get("mmdet3d_version") if isinstance(meta, Mapping) else None
    return str(version) if version else None


# ------------------------------------------------------------------------------------------
# The architecture from an mmdet3d model config
# ------------------------------------------------------------------------------------------


def _get(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _pad3(p: Any) -> tuple[int, int, int]:
    if isinstance(p, list | tuple):
        return (int(p[0]), int(p[1]), int(p[2]))
    return (int(p), int(p), int(p))


def mmdet3d_sparse_layers(enc: Mapping[str, Any]) -> tuple[SparseLayer, ...]:
    """mmdet3d ``SparseEncoder`` arguments -> the flat layer list (``conv_input``, each
    ``encoder_layerN`` in order, ``conv_out``), for both block types."""
    stages = [
        tuple(s)
        for s in enc.get("encoder_channels", ((16,), (32, 32, 32), (64, 64, 64), (64, 64, 64)))
    ]
    paddings = [
        tuple(p)
        for p in enc.get("encoder_paddings", ((1,), (1, 1, 1), (1, 1, 1), ((0, 1, 1), 1, 1)))
    ]
    block = enc.get("block_type", "conv_module")
    base = int(enc.get("base_channels", 16))
    layers: list[SparseLayer] = [("subm", int(enc["in_channels"]), base, 1, 1, 1, 0)]
    cin = base
    for i, widths in enumerate(stages):
        for j, width in enumerate(widths):
            pad = _pad3(paddings[i][j])
            if block == "conv_module":
                kind = "down" if i != 0 and j == 0 else "subm"
                layers.append((kind, cin, int(width), *pad, 0))
            elif j == len(widths) - 1 and i != len(stages) - 1:
                layers.append(("down", cin, int(width), *pad, 0))
            else:
                layers.append(("basic", int(width), int(width), 1, 1, 1, 0))
            cin = int(width)
    layers.append(("out", cin, int(enc.get("output_channels", 128)), 0, 0, 0, 0))
    return tuple(layers)


def from_mmdet3d_config(cfg: Mapping[str, Any]) -> tuple[CenterPointConfig, GridConfig]:
    """The CenterPoint and grid an mmdet3d 1.x config describes (its ``model`` dict)."""
    model = cfg.get("model", cfg)
    if not isinstance(model, Mapping):
        raise ConfigError("the mmdet3d config has no 'model' dict")
    if model.get("type") != "CenterPoint":
        raise ConfigError(f"the mmdet3d model is a {model.get('type')!r}, not a CenterPoint")
    voxel = _get(model, "data_preprocessor.voxel_layer") or _get(model, "pts_voxel_layer")
    if voxel is None:
        raise ConfigError("the mmdet3d config names no voxel_layer (data_preprocessor.voxel_layer)")
    vfe, middle = model["pts_voxel_encoder"], model["pts_middle_encoder"]
    backbone, neck, head = model["pts_backbone"], model["pts_neck"], model["pts_bbox_head"]
    test = _get(model, "test_cfg.pts", {}) or {}
    coder = head.get("bbox_coder", {})
    max_voxels = voxel.get("max_voxels", 20000)
    if isinstance(max_voxels, list | tuple):
        max_voxels = max_voxels[-1]  # (train, test)
    voxel_size = tuple(float(v) for v in voxel["voxel_size"])
    pc_range = tuple(float(v) for v in voxel["point_cloud_range"])
    kw: dict[str, Any] = dict(
        source="mmdet3d",
        max_points_per_voxel=int(voxel.get("max_num_points", 10)),
        max_voxels=int(max_voxels),
        backbone_channels=tuple(int(c) for c in backbone["out_channels"]),
        backbone_layers=tuple(int(n) for n in backbone["layer_nums"]),
        backbone_strides=tuple(int(s) for s in backbone["layer_strides"]),
        neck_channels=tuple(int(c) for c in neck["out_channels"]),
        neck_strides=tuple(float(s) for s in neck["upsample_strides"]),
        neck_conv_for_no_stride=bool(neck.get("use_conv_for_no_stride", False)),
        tasks=tuple(tuple(t["class_names"]) for t in head["tasks"]),
        shared_channels=int(head.get("share_conv_channel", 64)),
        head_channels=int(_get(head, "separate_head.head_conv", 64)),
        final_kernel=int(_get(head, "separate_head.final_kernel", 1)),
        heatmap_convs=int(head.get("num_heatmap_convs", 2)),
        head_convs=int(next(iter(head.get("common_heads", {"reg": (2, 2)}).values()))[1]),
        rotation_order="sin_cos",
        max_per_task=int(coder.get("max_num", 500)),
        # the coder's threshold and centre range act in decoding, before either NMS
        score_threshold=float(coder.get("score_threshold", test.get("score_threshold", 0.1))),
        post_center_range=tuple(float(v) for v in coder.get("post_center_range", test.get("post_center_limit_range"))),
        nms=str(test.get("nms_type", "rotate")),
        min_radius=tuple(float(r) for r in test.get("min_radius", ())),
        nms_iou=float(test.get("nms_thr", 0.2)),
        pre_nms=int(test.get("pre_max_size", 1000)),
        post_nms=int(test.get("post_max_size", 83)),
    )  # fmt: skip
    if vfe["type"] == "HardSimpleVFE":
        kw.update(
            encoder="voxel",
            point_features=int(vfe.get("num_features", 4)),
            sparse_shape=tuple(int(v) for v in middle["sparse_shape"]),
            sparse_layers=mmdet3d_sparse_layers(middle),
            sparse_bn_eps=float(_get(middle, "norm_cfg.eps", 1e-3)),
        )
        if int(middle["in_channels"]) != kw["point_features"]:
            raise ConfigError("pts_middle_encoder.in_channels differs from the VFE's num_features")
    elif vfe["type"] == "PillarFeatureNet":
        kw.update(
            encoder="pillar",
            point_features=int(vfe.get("in_channels", 4)),
            pillar_channels=tuple(int(c) for c in vfe.get("feat_channels", (64,))),
            pillar_cluster_center=bool(vfe.get("with_cluster_center", True)),
            pillar_voxel_center=bool(vfe.get("with_voxel_center", True)),
            pillar_distance=bool(vfe.get("with_distance", False)),
            pillar_legacy=bool(vfe.get("legacy", True)),
            sparse_bn_eps=float(_get(vfe, "norm_cfg.eps", 1e-3)),
        )
    else:
        raise ConfigError(
            f"pts_voxel_encoder {vfe['type']!r} is not supported (HardSimpleVFE for voxel "
            "CenterPoint, PillarFeatureNet for pillars)"
        )
    if neck.get("type", "SECONDFPN") != "SECONDFPN" or backbone.get("type", "SECOND") != "SECOND":
        raise ConfigError(
            f"only SECOND + SECONDFPN are supported, got {backbone.get('type')} + {neck.get('type')}"
        )
    grid = GridConfig(
        point_cloud_range=pc_range,  # type: ignore[arg-type]
        voxel_size=voxel_size,  # type: ignore[arg-type]
        bev_stride=int(coder.get("out_size_factor", test.get("out_size_factor", 8))),
    )
    return CenterPointConfig(**kw), grid


# ------------------------------------------------------------------------------------------
# Box conventions
# ------------------------------------------------------------------------------------------
# bevkd: (x, y, z_centre, l, w, h, yaw, vx, vy), yaw counter-clockwise from +x.
# mmdet3d 1.x LiDAR boxes: the same but z at the bottom face (its predict moves the gravity
# centre down by h / 2). OpenPCDet: (x, y, z_centre, dx, dy, dz, heading, vx, vy), the same
# as bevkd's; its head regresses (cos, sin), which only the head mapping swaps.


def boxes_from_mmdet3d(boxes: torch.Tensor) -> torch.Tensor:
    """mmdet3d 1.x (N, 7 or 9) LiDAR boxes -> bevkd's: z from the bottom to the centre."""
    out = boxes.clone()
    out[:, 2] = boxes[:, 2] + boxes[:, 5] / 2
    return out


def boxes_to_mmdet3d(boxes: torch.Tensor) -> torch.Tensor:
    """bevkd boxes -> mmdet3d 1.x LiDAR boxes (z at the bottom), e.g. to score in mmdet3d."""
    out = boxes.clone()
    out[:, 2] = boxes[:, 2] - boxes[:, 5] / 2
    return out


def boxes_from_openpcdet(boxes: torch.Tensor) -> torch.Tensor:
    """OpenPCDet (N, 7 or 9) boxes -> bevkd's: the same layout (z at the centre)."""
    return boxes.clone()


def rotation_from_openpcdet(rot: torch.Tensor) -> torch.Tensor:
    """OpenPCDet's rotation head (B, 2, H, W) = (cos, sin) -> bevkd's (sin, cos)."""
    return rot.flip(1)


# ------------------------------------------------------------------------------------------
# Key names: foreign -> bevkd
# ------------------------------------------------------------------------------------------

MMDET3D_BRANCHES = {"reg": "offset", "height": "z", "dim": "size", "rot": "rotation", "vel": "velocity", "heatmap": "heatmap"}  # fmt: skip
OPENPCDET_BRANCHES = {"center": "offset", "center_z": "z", "dim": "size", "rot": "rotation", "vel": "velocity", "hm": "heatmap"}  # fmt: skip


def _stage_offsets(keys: list[str], pattern: str) -> dict[int, int]:
    """Flat index of the first layer of each sparse stage (after the input conv at 0), from
    the highest layer index per stage that the checkpoint's keys show."""
    sizes: dict[int, int] = {}
    for key in keys:
        m = re.match(pattern, key)
        if m:
            stage, j = int(m.group(1)), int(m.group(2))
            sizes[stage] = max(sizes.get(stage, 0), j + 1)
    offsets, n = {}, 1
    for stage in sorted(sizes):
        offsets[stage] = n
        n += sizes[stage]
    offsets[-1] = n  # the output conv
    return offsets


def _sparse_item(rest: str) -> str:
    """The inside of one sparse layer: a basic block's own names, or a conv block's
    (``0`` conv, ``1`` norm)."""
    m = re.match(r"(\d+)\.(.*)", rest)
    if m:
        return ("conv." if m.group(1) == "0" else "bn.") + m.group(2)
    return rest


def mmdet3d_rename(key: str, offsets: dict[int, int]) -> str | None:
    """bevkd's name for an mmdet3d CenterPoint key, or None when nothing maps it."""
    patterns: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (r"pts_voxel_encoder\.pfn_layers\.(.*)", lambda m: f"pillars.pfn_layers.{m[1]}"),
        (r"pts_middle_encoder\.conv_input\.(.*)", lambda m: f"encoder.layers.0.{_sparse_item(m[1])}"),
        (r"pts_middle_encoder\.encoder_layers\.encoder_layer(\d+)\.(\d+)\.(.*)",
         lambda m: f"encoder.layers.{offsets[int(m[1])] + int(m[2])}.{_sparse_item(m[3])}"),
        (r"pts_middle_encoder\.conv_out\.(.*)", lambda m: f"encoder.layers.{offsets[-1]}.{_sparse_item(m[1])}"),
        (r"pts_backbone\.blocks\.(.*)", lambda m: f"backbone.blocks.{m[1]}"),
        (r"pts_neck\.deblocks\.(.*)", lambda m: f"neck.deblocks.{m[1]}"),
        (r"pts_bbox_head\.shared_conv\.conv\.(.*)", lambda m: f"head.shared.0.{m[1]}"),
        (r"pts_bbox_head\.shared_conv\.bn\.(.*)", lambda m: f"head.shared.1.{m[1]}"),
        (r"pts_bbox_head\.task_heads\.(\d+)\.(\w+)\.(\d+)\.conv\.(.*)",
         lambda m: f"head.tasks.{m[1]}.{MMDET3D_BRANCHES[m[2]]}.{m[3]}.0.{m[4]}"),
        (r"pts_bbox_head\.task_heads\.(\d+)\.(\w+)\.(\d+)\.bn\.(.*)",
         lambda m: f"head.tasks.{m[1]}.{MMDET3D_BRANCHES[m[2]]}.{m[3]}.1.{m[4]}"),
        (r"pts_bbox_head\.task_heads\.(\d+)\.(\w+)\.(\d+)\.(weight|bias)",
         lambda m: f"head.tasks.{m[1]}.{MMDET3D_BRANCHES[m[2]]}.{m[3]}.{m[4]}"),
    ]  # fmt: skip
    return _rename(key, patterns)


def openpcdet_rename(key: str, offsets: dict[int, int]) -> str | None:
    """bevkd's name for an OpenPCDet CenterPoint key, or None when nothing maps it. The 2D
    backbone's blocks start with a ZeroPad2d (no weights), so their indices shift by one."""
    patterns: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (r"backbone_3d\.conv_input\.(.*)", lambda m: f"encoder.layers.0.{_sparse_item(m[1])}"),
        (r"backbone_3d\.conv(\d+)\.(\d+)\.(.*)",
         lambda m: f"encoder.layers.{offsets[int(m[1])] + int(m[2])}.{_sparse_item(m[3])}"),
        (r"backbone_3d\.conv_out\.(.*)", lambda m: f"encoder.layers.{offsets[-1]}.{_sparse_item(m[1])}"),
        (r"backbone_2d\.blocks\.(\d+)\.(\d+)\.(.*)", lambda m: f"backbone.blocks.{m[1]}.{int(m[2]) - 1}.{m[3]}"),
        (r"backbone_2d\.deblocks\.(.*)", lambda m: f"neck.deblocks.{m[1]}"),
        (r"dense_head\.shared_conv\.(.*)", lambda m: f"head.shared.{m[1]}"),
        (r"dense_head\.heads_list\.(\d+)\.(\w+)\.(\d+)\.(\d+)\.(.*)",
         lambda m: f"head.tasks.{m[1]}.{OPENPCDET_BRANCHES[m[2]]}.{m[3]}.{m[4]}.{m[5]}"),
        (r"dense_head\.heads_list\.(\d+)\.(\w+)\.(\d+)\.(weight|bias)",
         lambda m: f"head.tasks.{m[1]}.{OPENPCDET_BRANCHES[m[2]]}.{m[3]}.{m[4]}"),
    ]  # fmt: skip
    return _rename(key, patterns)


def _rename(key: str, patterns: list[tuple[str, Callable[[re.Match[str]], str]]]) -> str | None:
    for pattern, make in patterns:
        m = re.fullmatch(pattern, key)
        if m:
            try:
                return make(m)
            except KeyError:
                return None
    return None


STAGE_PATTERNS = {
    "mmdet3d": r"pts_middle_encoder\.encoder_layers\.encoder_layer(\d+)\.(\d+)\.",
    "openpcdet": r"backbone_3d\.conv(\d+)\.(\d+)\.",
}
# Training bookkeeping that is saved with the weights but is not one: OpenPCDet's detector
# registers its step counter as a buffer (``global_step``).
BOOKKEEPING: dict[str, frozenset[str]] = {
    "mmdet3d": frozenset(),
    "openpcdet": frozenset({"global_step"}),
}
RENAMERS: dict[str, Callable[[str, dict[int, int]], str | None]] = {
    "mmdet3d": mmdet3d_rename,
    "openpcdet": openpcdet_rename,
}


def _kernel(
    name: str, tensor: torch.Tensor, want: torch.Size, layout: str
) -> tuple[torch.Tensor | None, str | None]:
    """A sparse-conv kernel in spconv 2's (Cout, kD, kH, kW, Cin), or a problem."""
    as1 = tensor.permute(4, 0, 1, 2, 3) if tensor.dim() == 5 else tensor
    fits = {"spconv2": tensor.shape == want, "spconv1": as1.shape == want}
    if layout == "auto":
        if fits["spconv1"] and fits["spconv2"]:
            return None, (
                f"{name}: kernel {tuple(tensor.shape)} fits both the spconv 1.x/mmcv layout "
                "(kD, kH, kW, Cin, Cout) and spconv 2's (Cout, kD, kH, kW, Cin); declare "
                "--kernel-layout spconv1 or spconv2"
            )
        layout = "spconv1" if fits["spconv1"] else "spconv2"
    if not fits[layout]:
        other = "spconv2" if layout == "spconv1" else "spconv1"
        hint = f" (it fits {other}: is the layout declared right?)" if fits[other] else ""
        return None, (
            f"{name}: shape {tuple(tensor.shape)} in the declared {layout} layout does not fit "
            f"bevkd's {tuple(want)}{hint}"
        )
    return (as1 if layout == "spconv1" else tensor).contiguous(), None


def convert_state(
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    source: str,
    kernel_layout: str = "auto",
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename and convert ``state`` onto ``target``'s names and shapes; every problem listed
    (unexpected keys, missing keys, shapes that differ). ``num_batches_tracked`` counters
    absent from the source are filled with 0, as torch's own BatchNorm load does."""
    if kernel_layout not in KERNEL_LAYOUTS:
        raise BevkdError(f"kernel layout must be one of {KERNEL_LAYOUTS}, got {kernel_layout!r}")
    keys = [k for k in state if k not in BOOKKEEPING[source]]
    offsets = _stage_offsets(keys, STAGE_PATTERNS[source])
    rename = RENAMERS[source]
    out: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    unexpected: list[str] = []
    mismatched: set[str] = set()  # bevkd keys whose source tensor is reported for its shape
    for key in keys:
        new = rename(key, offsets)
        if new is None or new not in target:
            unexpected.append(key if new is None else f"{key} (as {new})")
            continue
        tensor, want = state[key], target[new].shape
        if tensor.dim() == 5 or len(want) == 5:
            converted, problem = _kernel(key, tensor, want, kernel_layout)
            if problem:
                problems.append(problem)
                mismatched.add(new)
                continue
            tensor = converted  # type: ignore[assignment]
        elif tensor.shape != want:
            problems.append(
                f"{key} -> {new}: shape {tuple(tensor.shape)}, bevkd expects {tuple(want)}"
            )
            mismatched.add(new)
            continue
        out[new] = tensor.to(target[new].dtype)
    for k in target:
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = torch.zeros_like(target[k])
    missing = [k for k in target if k not in out and k not in mismatched]
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected key(s) in the checkpoint: {', '.join(unexpected)}"
        )
    if missing:
        problems.append(
            f"{len(missing)} bevkd key(s) missing from the checkpoint: {', '.join(missing)}"
        )
    return out, problems


# ------------------------------------------------------------------------------------------
# The import
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Imported:
    """A converted teacher: its bevkd config, weights and what it came from."""

    config: Config
    state: dict[str, torch.Tensor]
    origin: dict[str, Any]


def grid_problems(grid: GridConfig, cp: CenterPointConfig) -> list[str]:
    problems = []
    lo, hi = grid.point_cloud_range[:3], grid.point_cloud_range[3:]
    for axis, low, high, size in zip("xyz", lo, hi, grid.voxel_size, strict=True):
        cells = (high - low) / size
        if abs(cells - round(cells)) > 1e-4:
            problems.append(f"grid: the {axis} range {low}..{high} is not a whole number of {size} m voxels ({cells:.4f})")  # fmt: skip
    nx, ny, _ = grid.voxel_shape
    if nx % grid.bev_stride or ny % grid.bev_stride:
        problems.append(
            f"grid: {nx} x {ny} voxels do not divide by out_size_factor {grid.bev_stride}"
        )
    if cp.encoder == "voxel" and tuple(cp.sparse_shape[1:]) != (ny, nx):
        problems.append(
            f"grid: sparse_shape {cp.sparse_shape} does not match the voxel grid ({ny}, {nx}) in y, x"
        )
    return problems


def class_problems(cp: CenterPointConfig, dataset_classes: tuple[str, ...]) -> list[str]:
    unknown = [c for c in cp.classes if c not in dataset_classes]
    if unknown:
        return [f"classes {unknown} of the teacher's tasks are not classes of the dataset ({list(dataset_classes)})"]  # fmt: skip
    return []


def import_centerpoint(
    path: str | Path,
    source: str,
    base: Config,
    kernel_layout: str = "auto",
    allow_unversioned: bool = False,
) -> Imported:
    """Convert the foreign CenterPoint at ``path`` into a bevkd ``centerpoint`` teacher.

    ``base``: the user's config (dataset, and for OpenPCDet or a config-less mmdet3d file the
    ``grid`` and ``centerpoint`` sections). Raises :class:`ImportProblem` listing everything
    that does not fit."""
    from bevkd.models.centerpoint import build_centerpoint_teacher

    if source not in SOURCES:
        raise BevkdError(f"source must be one of {SOURCES}, got {source!r}")
    payload = load_foreign(path)
    state = weights_of(payload, source, path)
    problems: list[str] = []
    origin: dict[str, Any] = {
        "framework": source,
        "file": str(path),
        "kernel_layout": kernel_layout,
    }
    cp, grid = base.centerpoint, base.grid
    if source == "mmdet3d":
        version = mmdet3d_version(payload)
        origin["mmdet3d_version"] = version
        if version is not None and version.split(".")[0] == "0":
            raise ImportProblem(path, [
                f"an mmdet3d {version} checkpoint: before mmdet3d 1.0's coordinate refactor boxes "
                "were (w, l, h) with a left-handed yaw, so this head's size and rotation "
                "channels mean something else. Convert it with mmdet3d's "
                "tools/model_converters/update_infos / convert its head with mmdet3d 1.x, then import that",
            ])  # fmt: skip
        if version is None and not allow_unversioned:
            raise ImportProblem(path, [
                "the checkpoint records no meta.mmdet3d_version, so it may predate mmdet3d 1.0's "
                "coordinate refactor; if you know it is 1.x, pass --assume-mmdet3d-1x",
            ])  # fmt: skip
        text = (payload.get("meta") or {}).get("cfg")
        if isinstance(text, str) and text.strip():
            try:
                cp, grid = from_mmdet3d_config(read_mmengine_config(text))
                origin["architecture_from"] = "meta.cfg"
            except (ConfigError, KeyError, TypeError, ValueError) as exc:
                raise ImportProblem(path, [f"meta.cfg does not describe a supported CenterPoint: {exc}"]) from exc  # fmt: skip
        else:
            origin["architecture_from"] = "the user's config"
    else:
        origin["architecture_from"] = "the user's config"
        cp = dataclasses.replace(cp, source="openpcdet")
    problems += grid_problems(grid, cp)
    problems += class_problems(cp, tuple(base.classes))
    if problems:
        raise ImportProblem(path, problems)
    model = build_centerpoint_teacher(cp, grid)
    converted, problems = convert_state(state, model.state_dict(), source, kernel_layout)
    if problems:
        raise ImportProblem(path, problems)
    config = dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, kind="centerpoint"),
        centerpoint=cp,
        grid=grid,
        classes=cp.classes,
    )
    origin["sha256"] = sha256_file(path)
    return Imported(config=config, state=converted, origin=origin)
