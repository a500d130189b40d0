"""The teacher store's versioned contract: fields, kinds, the BEV grid and provenance.

A store is one Zarr v3 group. Its attrs hold ``schema_version``, ``grid``, ``classes``,
``fields`` (a list of :class:`FieldSpec` dicts), ``provenance`` and, after finalize,
``stats`` and ``codec_error``. Stage one (the writer) and stage two (readers, students)
meet here and in :mod:`bevkd.pipeline.geometry`; nothing in this module imports zarr.

Field kinds say how a field behaves under BEV augmentation (see :mod:`.augment`):

- ``bev_feature``: (C, H', W') feature map on the grid (or a coarser scale of it);
  moved, never changed channel-wise.
- ``embedding``: (C, H', W') label-encoder BEV map; transforms like ``bev_feature``.
- ``heatmap``: (K, H, W) per-class centre heatmap, logits or probabilities (declared).
- ``box_regression``: (10, H, W) in :data:`REGRESSION_CHANNELS` order; channels are
  transformed (offsets, yaw, velocity, sizes), not only moved.
- ``boxes``: ragged per-frame decoded boxes, rows of :data:`BOX_ROW_CHANNELS`; stored
  padded to ``shape[0]`` rows plus a per-frame row count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bevkd.pipeline.errors import BevkdError
from bevkd.pipeline.geometry import REGRESSION_CHANNELS, BEVGrid
from bevkd.pipeline.provenance import environment, sha256_lines

# 2: chunk keys use '.' (c.<i>.0.0); 1: zarr's default '/'. Readers read both.
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)  # same fields and semantics; only the chunk keys differ

KINDS = ("bev_feature", "heatmap", "box_regression", "embedding", "boxes")
SPATIAL_KINDS = ("bev_feature", "heatmap", "box_regression", "embedding")


# One row of a ``boxes`` field: the (N, 9) box convention, then score and class id.
BOX_ROW_CHANNELS: tuple[str, ...] = (
    "x", "y", "z", "l", "w", "h", "yaw", "vx", "vy", "score", "label",
)  # fmt: skip

HEATMAP_ACTIVATIONS = ("logits", "probabilities")


class StoreError(BevkdError):
    """A teacher store is missing, incomplete, corrupt or not what the consumer expects."""


class ContractMismatch(StoreError):
    """The store's contract differs from the one the consumer was built for."""


@dataclass(frozen=True)
class FieldSpec:
    """One named field of the store.

    ``shape`` is the per-frame shape: (C, H', W') for spatial kinds, (capacity, 11) for
    ``boxes``. ``dtype`` is the decoded dtype a reader returns (float32). ``codec`` names
    the storage encoding (see :mod:`.codecs`). ``labeled_only`` fields exist only for frames
    with ``has_label``. ``heatmap_activation`` is required for heatmaps, empty otherwise.
    """

    name: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    codec: str
    channel_map: tuple[str, ...] = ()
    labeled_only: bool = False
    heatmap_activation: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "channel_map", tuple(self.channel_map))
        where = f"field {self.name!r}"
        if not self.name or "/" in self.name:
            raise StoreError(f"{where}: names must be non-empty and contain no '/'")
        if self.kind not in KINDS:
            raise StoreError(f"{where}: unknown kind {self.kind!r}; use one of {KINDS}")
        if self.kind in SPATIAL_KINDS and len(self.shape) != 3:
            raise StoreError(
                f"{where}: a {self.kind} has per-frame shape (C, H, W), got {self.shape}"
            )
        if self.kind == "boxes" and (
            len(self.shape) != 2 or self.shape[1] != len(BOX_ROW_CHANNELS)
        ):
            raise StoreError(
                f"{where}: boxes have per-frame shape (capacity, 11), got {self.shape}"
            )
        if self.kind == "heatmap" and self.heatmap_activation not in HEATMAP_ACTIVATIONS:
            raise StoreError(
                f"{where}: heatmaps must declare heatmap_activation in {HEATMAP_ACTIVATIONS}"
            )
        if self.kind != "heatmap" and self.heatmap_activation:
            raise StoreError(f"{where}: heatmap_activation applies to heatmaps only")
        if self.kind == "box_regression" and self.channel_map != REGRESSION_CHANNELS:
            raise StoreError(f"{where}: box_regression channel_map must be {REGRESSION_CHANNELS}")
        if (
            self.channel_map
            and self.kind in SPATIAL_KINDS
            and len(self.channel_map) != self.shape[0]
        ):
            raise StoreError(
                f"{where}: {len(self.channel_map)} channel names for {self.shape[0]} channels"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "codec": self.codec,
            "channel_map": list(self.channel_map),
            "labeled_only": self.labeled_only,
            "heatmap_activation": self.heatmap_activation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FieldSpec:
        return cls(
            name=data["name"],
            kind=data["kind"],
            dtype=data["dtype"],
            shape=tuple(data["shape"]),
            codec=data["codec"],
            channel_map=tuple(data.get("channel_map", ())),
            labeled_only=bool(data.get("labeled_only", False)),
            heatmap_activation=data.get("heatmap_activation", ""),
        )

    def semantics(self) -> tuple[Any, ...]:
        """What a consumer depends on (the codec is the store's business, not the consumer's)."""
        return (
            self.kind,
            self.dtype,
            self.shape,
            self.channel_map,
            self.labeled_only,
            self.heatmap_activation,
        )


@dataclass(frozen=True)
class StoreContract:
    """What a store holds: schema version, BEV grid, class list and the field table."""

    schema_version: int
    grid: BEVGrid
    classes: tuple[str, ...]
    fields: tuple[FieldSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "fields", tuple(self.fields))
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise StoreError(f"duplicate field names in the contract: {names}")

    def field(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise StoreError(f"the store has no field {name!r}; it has {[f.name for f in self.fields]}")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "grid": self.grid.to_dict(),
            "classes": list(self.classes),
            "fields": [f.to_dict() for f in self.fields],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreContract:
        return cls(
            schema_version=int(data["schema_version"]),
            grid=BEVGrid.from_dict(data["grid"]),
            classes=tuple(data["classes"]),
            fields=tuple(FieldSpec.from_dict(f) for f in data["fields"]),
        )

    def differences(self, expected: StoreContract) -> list[str]:
        """Human-readable differences between this (the store's) contract and ``expected``.

        The consumer's fields must all exist in the store with the same semantics; extra
        store fields are fine (a recipe reads the fields it needs). Codecs may differ.
        """
        out = []
        versions = {self.schema_version, expected.schema_version}
        if len(versions) > 1 and not versions <= set(READABLE_SCHEMA_VERSIONS):
            out.append(
                f"schema version: store has {self.schema_version}, expected {expected.schema_version}"
            )
        if self.grid != expected.grid:
            out.append(
                f"grid: store has {grid_text(self.grid)}, expected {grid_text(expected.grid)}"
            )
        if self.classes != expected.classes:
            out.append(
                f"classes: store has {list(self.classes)}, expected {list(expected.classes)}"
            )
        names = set(self.field_names)
        missing = [f.name for f in expected.fields if f.name not in names]
        if missing:
            out.append(f"field set: store lacks {missing} (it has {list(self.field_names)})")
        for want in expected.fields:
            if want.name in names and self.field(want.name).semantics() != want.semantics():
                have = self.field(want.name)
                out.append(
                    f"field {want.name!r}: store has kind={have.kind} shape={have.shape} "
                    f"labeled_only={have.labeled_only}, expected kind={want.kind} shape={want.shape} "
                    f"labeled_only={want.labeled_only} (or channel map / activation differ)"
                )
        return out

    def check_compatible(self, expected: StoreContract, where: str = "store") -> None:
        """Raise :class:`ContractMismatch` naming every difference from ``expected``."""
        diffs = self.differences(expected)
        if diffs:
            raise ContractMismatch(
                f"{where} does not match the consumer's contract: " + "; ".join(diffs)
            )


def grid_text(grid: BEVGrid) -> str:
    """One line naming a grid's extent, cell and shape, for messages."""
    return (
        f"x [{grid.x_min:g}, {grid.x_max:g}) y [{grid.y_min:g}, {grid.y_max:g}) cell {grid.cell:g} "
        f"({grid.H}x{grid.W})"
    )


def field_grid(grid: BEVGrid, spec: FieldSpec) -> BEVGrid:
    """The grid a spatial field lives on: the store grid or an integer-coarser scale of it."""
    _, height, width = spec.shape
    if (height, width) == grid.shape:
        return grid
    factor = grid.H // height if height else 0
    if factor < 1 or height * factor != grid.H or width * factor != grid.W:
        raise StoreError(
            f"field {spec.name!r}: spatial size {height}x{width} is not the grid {grid.H}x{grid.W} "
            "or an integer downscale of it"
        )
    return grid.scaled(factor)


def make_provenance(
    *,
    teacher: str,
    checkpoint_sha256: str | dict[str, str],
    config_yaml: str,
    config_sha256: str,
    dataset_name: str,
    dataset_version: str,
    dataset_splits: Sequence[str],
    tokens: Sequence[str],
) -> dict[str, Any]:
    """The provenance dict stored in the attrs: what made this store, from what, when.

    ``checkpoint_sha256`` may be a dict (teacher name -> sha256) when several teachers ran.
    """
    env = environment()
    return {
        "teacher": teacher,
        "checkpoint_sha256": checkpoint_sha256,
        "config": config_yaml,
        "config_sha256": config_sha256,
        "code_version": env["code"]["commit"],
        "code_dirty": env["code"]["dirty"],
        "dataset": {
            "name": dataset_name,
            "version": dataset_version,
            "splits": list(dataset_splits),
        },
        "frame_tokens_sha256": sha256_lines(list(tokens)),
        "packages": env["packages"],
        "created_at": env["created_at"],
    }


ATTRS_CHECKSUM_KEY = "attrs_sha256"


def attrs_sha256(attrs: dict[str, Any]) -> str:
    """sha256 of a store's root attrs (canonical JSON), leaving out the checksum's own key.

    Written at creation and at every later change of the attrs (finalize, a repair), so
    ``verify`` can tell attrs edited by hand or damaged in transit from the ones bevkd wrote.
    """
    import hashlib
    import json

    body = {k: v for k, v in attrs.items() if k != ATTRS_CHECKSUM_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sealed(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` with their checksum (:func:`attrs_sha256`) under :data:`ATTRS_CHECKSUM_KEY`."""
    return {**attrs, ATTRS_CHECKSUM_KEY: attrs_sha256(attrs)}


PROVENANCE_KEYS = (
    "teacher",
    "checkpoint_sha256",
    "config",
    "config_sha256",
    "code_version",
    "code_dirty",
    "dataset",
    "frame_tokens_sha256",
    "packages",
    "created_at",
)
