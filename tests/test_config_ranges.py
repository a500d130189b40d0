"""Every numeric config key declares its valid range, and a value outside it is a one-line
ConfigError naming the key when the config loads, never a traceback later (a batch size of 0
was a ZeroDivisionError in the sampler, epochs -1 a ValueError in the LR scheduler)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bevkd.pipeline.cli import main
from bevkd.pipeline.config import (
    Config,
    ConfigError,
    Range,
    load_config,
    parse_override,
    recorded_config,
    to_dict,
    with_overrides,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PROBES = (0, -1, math.nan, math.inf, -math.inf)


def _leaf_types(hint: Any) -> set[Any]:
    """The scalar types a field's annotation holds: ``tuple[tuple[str, float], ...]`` ->
    {str, float}."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (tuple, typing.Union, types.UnionType):
        return set().union(*(_leaf_types(a) for a in args if a is not Ellipsis))
    return {hint}


def _numeric_fields(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, annotation, field) of every field reachable from ``cls`` that holds an
    int or a float, alone or in (nested) tuples; found from the annotations, not the ranges."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += _numeric_fields(hint, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif _leaf_types(hint) & {int, float}:
            out.append((f"{prefix}{f.name}", hint, f))
    return out


NUMERIC = _numeric_fields()


def _inside(limits: Range, x: float) -> bool:
    """Whether ``x`` lies in ``limits``, computed here from its bounds (not by Range.admits)."""
    if x in limits.allow:
        return True
    if math.isnan(x) or math.isinf(x):
        return False
    if limits.lo is not None and (x <= limits.lo if limits.lo_open else x < limits.lo):
        return False
    return limits.hi is None or (x < limits.hi if limits.hi_open else x <= limits.hi)


def _sample(hint: Any) -> Any:
    """A small valid value of type ``hint``, as YAML data (for a tuple field that is empty)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return [_sample(args[0])] if args[-1] is Ellipsis else [_sample(a) for a in args]
    if origin in (typing.Union, types.UnionType):
        return _sample(next(a for a in args if a is not type(None)))
    return {str: "car", int: 1, float: 0.5}[hint]


def _set_first_number(value: Any, number: float) -> tuple[Any, bool]:
    """``value`` (YAML data) with its first number replaced by ``number``; whether it had one."""
    if isinstance(value, list):
        out, done = [], False
        for item in value:
            if not done:
                item, done = _set_first_number(item, number)
            out.append(item)
        return out, done
    if isinstance(value, int | float) and not isinstance(value, bool):
        return number, True
    return value, False


def _numbers(value: Any) -> list[float]:
    """The numbers in ``value`` (YAML data), in order."""
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []


def _yaml(value: Any) -> str:
    """``value`` in the YAML an override takes: nan and infinities as .nan, .inf, -.inf."""
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return str(value)


def _override(key: str, hint: Any, number: float) -> str:
    """``key=value`` setting one number of the field ``key`` (its first, for a tuple field) to
    ``number``, the rest at their defaults."""
    default: Any = to_dict(Config())
    for part in key.split("."):
        default = default[part]
    value, done = _set_first_number(default, number)
    if not done:  # an empty tuple or None: one sample entry around the number
        value, done = _set_first_number(_sample(hint), number)
    assert done, key
    return f"{key}={_yaml(value)}"


def test_every_numeric_key_declares_a_range() -> None:
    assert len(NUMERIC) > 100, [key for key, _, _ in NUMERIC]
    missing = [key for key, _, f in NUMERIC if not isinstance(f.metadata.get("range"), Range)]
    assert not missing, f"numeric config keys without a declared range (use num()): {missing}"


def test_every_default_is_inside_its_range() -> None:
    defaults = to_dict(Config())
    outside = []
    for key, _, f in NUMERIC:
        value: Any = defaults
        for part in key.split("."):
            value = value[part]
        outside += [f"{key}={v}" for v in _numbers(value) if not _inside(f.metadata["range"], v)]
    assert not outside


def test_yaml_spells_nan_and_infinity_with_a_dot() -> None:
    assert math.isnan(parse_override("train.lr=.nan")["train"]["lr"])
    assert parse_override("train.lr=-.inf")["train"]["lr"] == -math.inf
    assert parse_override("train.lr=inf")["train"]["lr"] == "inf"  # a string: a type error


@pytest.mark.parametrize(("key", "hint", "f"), NUMERIC, ids=[key for key, _, _ in NUMERIC])
def test_a_number_outside_the_range_is_a_config_error_naming_the_key(
    key: str, hint: Any, f: dataclasses.Field[Any]
) -> None:
    limits = f.metadata["range"]
    (number_type,) = _leaf_types(hint) & {int, float}
    for number in PROBES:
        override = _override(key, hint, number)
        fits_type = number_type is float or math.isfinite(number)
        try:
            cfg = with_overrides(Config(), [override])
        except ConfigError as exc:
            message = str(exc)
            assert key in message and "\n" not in message, (override, message)
            assert not (fits_type and _inside(limits, number)), f"{override}: {message}"
            continue
        assert fits_type and _inside(limits, number), f"{override} was accepted"
        value: Any = to_dict(cfg)
        for part in key.split("."):
            value = value[part]
        assert _numbers(value)[0] == number, override  # the number landed where it was set


@pytest.mark.parametrize(
    ("override", "accepted"),
    [
        ("train.batch_size=0", False),
        ("train.epochs=-1", False),
        ("train.epochs=1", True),
        ("train.lr=-1", False),
        ("train.lr=0", False),
        ("train.weight_decay=0", True),
        ("train.grad_clip=0", False),
        ("train.seed=0", True),
        ("train.eval_every=0", True),
        ("train.eval_every=-1", False),
        ("train.torch_threads=0", True),
        ("train.num_workers=0", True),
        ("cache.max_frames=0", True),
        ("cache.n_workers=0", True),
        ("eval.class_range=0", True),
        ("data.labeled_fraction=0", False),
        ("data.labeled_fraction=1", True),
        ("head.score_threshold=.nan", False),
        ("head.score_threshold=1.5", False),
        ("distill.bev_weight=0", True),
        ("distill.mgd_mask_ratio=1", False),
        ("grid.voxel_size=[0.1, 0, 0.2]", False),
        ("grid.point_cloud_range=[-1000, -51.2, -5, 51.2, 51.2, 3]", True),
        ("distill.pseudo_class_thresholds=[[car, 1.5]]", False),
    ],
)
def test_hand_picked_values(override: str, accepted: bool) -> None:
    try:
        load_config(None, [override])
    except ConfigError as exc:
        assert not accepted, f"{override}: {exc}"
        assert override.split("=")[0] in str(exc)
    else:
        assert accepted, f"{override} was accepted"


def test_the_message_names_the_key_the_value_and_the_range() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["train.batch_size=0"])
    assert str(exc.value) == (
        "config key 'train.batch_size' = 0 is out of range: it must be an integer >= 1"
    )
    with pytest.raises(ConfigError, match=r"'train\.eval_every' = -1 .*>= 1, or 0 \(only at"):
        load_config(None, ["train.eval_every=-1"])
    with pytest.raises(ConfigError, match=r"'grid\.voxel_size\[1\]' = 0\.0 is out of range"):
        load_config(None, ["grid.voxel_size=[0.2, 0, 0.25]"])
    with pytest.raises(ConfigError, match=r"'train\.lr' = nan .*a number > 0$"):
        load_config(None, ["train.lr=.nan"])


def test_recorded_and_replaced_configs_are_checked_too() -> None:
    data = to_dict(Config())
    data["train"]["batch_size"] = 0
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        recorded_config(data)
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        dataclasses.replace(Config(), train=dataclasses.replace(Config().train, batch_size=0))


def test_every_shipped_config_is_inside_the_ranges() -> None:
    paths = sorted(CONFIG_DIR.rglob("*.yaml"))
    assert len(paths) >= 30
    for path in paths:
        load_config(path)  # a value out of range raises ConfigError naming the file and key


def _bevkd(*args: str) -> tuple[int, str]:
    """Run the ``bevkd`` entry point (``main``: what a shell runs, errors printed as one line)
    in click's isolated streams: (exit status, stdout and stderr)."""
    with CliRunner().isolation() as (_, _, output):
        try:
            main(list(args))
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
    return status, output.getvalue().decode()


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("config", "show", "--set", "train.batch_size=0"), "train.batch_size"),
        (("train-teacher", "--set", "train.epochs=-1"), "train.epochs"),
        (("train-teacher", "--set", "train.batch_size=0"), "train.batch_size"),
        (("train-student", "--set", "train.lr=-1"), "train.lr"),
        (("cache-teacher", "--set", "store.shard_size=0"), "store.shard_size"),
        (("evaluate", "--results", "r.json", "--set", "head.nms_iou=.inf"), "head.nms_iou"),
    ],
)
def test_the_cli_prints_one_line_and_exits_2(args: tuple[str, ...], key: str) -> None:
    status, output = _bevkd(*args)
    assert status == 2, output
    assert "Traceback" not in output and output.count("\n") == 1, output
    assert output.startswith(f"error: config key '{key}' = ") and "out of range" in output
