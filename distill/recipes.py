"""Recipes: what a student learns from, as named, weighted loss terms.

One literal table, :data:`RECIPES` (name -> recipe class); adding a recipe is one file in
``distill/`` and one line here. The base class and its contract: :mod:`bevkd.distill.base`.
"""

from __future__ import annotations

from collections.abc import Callable

from bevkd.distill.base import Baseline, Recipe
from bevkd.distill.cmkd import CMKD
from bevkd.distill.focal import FocalDistiller
from bevkd.distill.labeldistill import LabelDistill
from bevkd.distill.simdistill import SimDistill
from bevkd.pipeline.config import Config, ConfigError

RECIPES: dict[str, Callable[[Config], Recipe]] = {
    "baseline": Baseline,
    "cmkd": CMKD,
    "focal": FocalDistiller,
    "labeldistill": LabelDistill,
    "simdistill": SimDistill,
}

__all__ = ["CMKD", "RECIPES", "Baseline", "Recipe", "build_recipe"]


def build_recipe(cfg: Config) -> Recipe:
    """The recipe ``student.recipe`` names."""
    make = RECIPES.get(cfg.student.recipe)
    if make is None:
        raise ConfigError(
            f"student.recipe '{cfg.student.recipe}' is unknown; recipes: {sorted(RECIPES)}"
        )
    return make(cfg)
