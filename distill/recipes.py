"""Recipes: what a student learns from, as named, weighted loss terms.

One literal table, :data:`RECIPES` (name -> recipe class); adding a recipe is one file in
``distill/`` and one line here. The base class and its contract: :mod:`bevkd.distill.base`.
Recipes combine by name: ``student.recipe: cmkd+pseudo_label`` is :class:`Combined`, the GT
terms once and every part's own terms.

Each recipe class owns the defaults of the ``distill.*`` weights that recipes disagree on
(``Recipe.DEFAULTS``, its paper's values); :func:`with_recipe_defaults` fills them into a
config, and :func:`build_recipe` builds from the filled config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import torch
from torch import nn

from bevkd.datasets.student_batch import StudentBatch
from bevkd.distill.base import Baseline, Recipe, fill_defaults
from bevkd.distill.cmkd import CMKD
from bevkd.distill.focal import FocalDistiller
from bevkd.distill.labeldistill import LabelDistill
from bevkd.distill.pseudo_label import PseudoLabel
from bevkd.distill.simdistill import SimDistill
from bevkd.models.camera_student import StudentOutput
from bevkd.pipeline.config import Config, ConfigError

RECIPES: dict[str, type[Recipe]] = {
    "baseline": Baseline,
    "cmkd": CMKD,
    "focal": FocalDistiller,
    "labeldistill": LabelDistill,
    "pseudo_label": PseudoLabel,
    "simdistill": SimDistill,
}

__all__ = [
    "CMKD",
    "RECIPES",
    "Baseline",
    "Combined",
    "Recipe",
    "build_recipe",
    "recipe_names",
    "with_recipe_defaults",
]


class Combined(Recipe):
    """Several recipes as one: the GT terms once (kept only if every part keeps them), each
    part's own terms (:meth:`Recipe.kd_terms`), the union of the fields they read. Two parts
    that need one field at different shapes, or that name a term alike, are refused."""

    def __init__(self, cfg: Config, parts: list[Recipe]) -> None:
        super().__init__(cfg, use_gt=all(p.use_gt for p in parts))
        self.parts = nn.ModuleList(parts)
        for part in parts:
            for name, shape in part.expects.items():
                have = self.expects.get(name)
                if have is not None and shape is not None and have != shape:
                    raise ConfigError(
                        f"student.recipe {cfg.student.recipe}: its parts need store field "
                        f"{name!r} at shapes {have} and {shape}"
                    )
                self.expects[name] = have if shape is None else shape

    @property
    def recipes(self) -> list[Recipe]:
        """The parts, typed."""
        return [cast(Recipe, part) for part in self.parts]

    def bind(self, fields: dict[str, Any]) -> Recipe:
        for part in self.recipes:
            part.bind({name: fields[name] for name in part.expects})
        return super().bind(fields)

    def kd_terms(self, out: StudentOutput, batch: StudentBatch) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        for part in self.recipes:
            mine = part.kd_terms(out, batch)
            if twice := sorted(set(mine) & set(terms)):
                raise ConfigError(f"recipe parts both produce the terms {twice}")
            terms |= mine
        return terms


def recipe_names(cfg: Config) -> list[str]:
    """The recipes ``student.recipe`` names (one, or several joined by '+'), checked."""
    names = cfg.student.recipe.split("+")
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not all(names):
        raise ConfigError(
            f"student.recipe '{cfg.student.recipe}' is unknown; recipes: {sorted(RECIPES)}, "
            "or several joined by '+' (e.g. cmkd+pseudo_label)"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"student.recipe '{cfg.student.recipe}' names a recipe twice")
    return names


def with_recipe_defaults(cfg: Config) -> Config:
    """``cfg`` with every ``distill.*`` value it leaves None set to the default of the recipe
    that owns it (``DEFAULTS`` of each recipe ``student.recipe`` names; the parts' defaults
    merged). Two parts with different defaults for one key the config leaves None are an
    error naming both: the config must choose. Values the config sets are kept."""
    merged: dict[str, tuple[float, str]] = {}
    for name in recipe_names(cfg):
        for key, value in RECIPES[name].DEFAULTS.items():
            if getattr(cfg.distill, key) is not None:
                continue
            if key in merged and merged[key][0] != value:
                other, theirs = merged[key][1], merged[key][0]
                raise ConfigError(
                    f"student.recipe {cfg.student.recipe}: {other} and {name} default "
                    f"distill.{key} to {theirs} and {value}: set distill.{key}"
                )
            merged[key] = (value, name)
    defaults = {key: value for key, (value, _) in merged.items()}
    return dataclasses.replace(cfg, distill=fill_defaults(cfg.distill, defaults))


def build_recipe(cfg: Config) -> Recipe:
    """The recipe ``student.recipe`` names, or the :class:`Combined` parts of ``a+b``, built
    from ``cfg`` with the recipes' defaults filled in (:func:`with_recipe_defaults`)."""
    names = recipe_names(cfg)
    cfg = with_recipe_defaults(cfg)
    if len(names) == 1:
        return RECIPES[names[0]](cfg)
    return Combined(cfg, [RECIPES[n](cfg) for n in names])
