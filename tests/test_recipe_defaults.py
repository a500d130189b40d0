"""Each recipe's own defaults for the distill weights recipes disagree on (issue 24): what
``with_recipe_defaults`` fills in, what a combined recipe does when its parts disagree, that
``build_recipe`` and a recipe built directly read them, and that ``bevkd config show`` prints
them. Expected numbers are the papers', written out here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_distill_losses import small_cfg

from bevkd.distill.base import Baseline
from bevkd.distill.cmkd import CMKD
from bevkd.distill.labeldistill import LabelDistill
from bevkd.distill.recipes import RECIPES, build_recipe, with_recipe_defaults
from bevkd.pipeline.commands.config import command as config_command
from bevkd.pipeline.config import ConfigError, DistillConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
KEYS = ("bev_weight", "heatmap_weight", "regression_weight")


def resolved(recipe: str, *sets: str) -> tuple[float | None, ...]:
    d = with_recipe_defaults(small_cfg(f"student.recipe={recipe}", *sets)).distill
    return tuple(getattr(d, key) for key in KEYS)


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ("cmkd", (50.0, 0.2, 50.0)),  # CMKD-MV: BEV MSE 50, QFL 0.2, soft box 50
        ("labeldistill", (0.3, 1.0, 0.25)),  # LiDAR feature 0.3, focal 1, L1 box 0.25
        ("simdistill", (None, 0.25, 0.25)),  # MMD-P's QFL 0.25 and box 0.25; no bev_weight
        ("cmkd+pseudo_label", (50.0, 0.2, 50.0)),  # pseudo_label owns none of them
        ("baseline", (None, None, None)),
        ("focal", (None, None, None)),
    ],
)
def test_each_recipe_fills_its_papers_weights(recipe: str, expected: tuple) -> None:
    assert resolved(recipe) == expected


def test_values_the_config_sets_are_kept() -> None:
    assert resolved("labeldistill", "distill.heatmap_weight=2") == (0.3, 2.0, 0.25)
    assert resolved("cmkd", "distill.bev_weight=1", "distill.regression_weight=6") == (
        1.0, 0.2, 6.0,
    )  # fmt: skip


def test_parts_that_disagree_on_a_default_must_be_settled_by_the_config() -> None:
    with pytest.raises(ConfigError, match=r"cmkd and labeldistill default distill\.bev_weight"):
        with_recipe_defaults(small_cfg("student.recipe=cmkd+labeldistill"))
    sets = ("distill.bev_weight=1", "distill.heatmap_weight=1", "distill.regression_weight=1")
    assert resolved("cmkd+labeldistill", *sets) == (1.0, 1.0, 1.0)


def test_the_recipe_owned_keys_default_to_none_and_every_one_has_an_owner() -> None:
    none_by_default = {
        f.name
        for f in dataclasses.fields(DistillConfig)
        if getattr(DistillConfig(), f.name) is None
    }
    owned = {key for cls in RECIPES.values() for key in cls.DEFAULTS}
    assert owned == none_by_default == set(KEYS)


def test_a_recipe_built_from_an_unresolved_config_reads_its_defaults() -> None:
    cfg = small_cfg("student.recipe=labeldistill")
    assert cfg.distill.bev_weight is None
    assert build_recipe(cfg).d.bev_weight == 0.3
    assert LabelDistill(cfg).resolved("regression_weight") == 0.25  # built directly, too
    assert CMKD(cfg).resolved("regression_weight") == 50.0  # each recipe its own
    with pytest.raises(ConfigError, match=r"distill\.bev_weight is not set and the Baseline"):
        Baseline(cfg).resolved("bev_weight")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("demo/student_simdistill.yaml", {"heatmap_weight": "0.25", "regression_weight": "0.25"}),
        ("demo/student_labeldistill.yaml", {"heatmap_weight": "1.0", "regression_weight": "0.25"}),
        ("nuscenes/student_cmkd.yaml", {"bev_weight": "50.0", "qfl_threshold": "0.5"}),
    ],
)
def test_config_show_prints_the_recipes_defaults(config: str, expected: dict[str, str]) -> None:
    result = CliRunner().invoke(config_command, ["show", "--config", str(CONFIGS / config)])
    assert result.exit_code == 0, result.output
    distill = result.output.split("\ndistill:\n", 1)[1]
    for key, value in expected.items():
        assert f"\n  {key}: {value}\n" in f"\n{distill}", (key, distill)
