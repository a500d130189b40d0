"""The arms of benchmarks/recipes.py: each arm's config and overrides, the seeds it runs, its
run folder under ``work/demo/`` and the store it reads; the codec stores' choices.

Shared by the run (recipes.py), the report (recipes_report.py) and the figures
(recipe_figures.py), so all three name the same arms, seeds and folders.
"""

from __future__ import annotations

from pathlib import Path

from few_labels import epochs as epochs_for

OUT = Path("work/demo")
STORE = "work/demo/teacher.zarr"
DATA = "work/demo/data"
RESULTS = OUT / "results"
STEPS = 144
LABELLED, SWEEPS = 72, 72
# Publication order (METHODS.md): CMKD (ECCV 2022), FocalDistiller (CVPR 2023), SimDistill
# (AAAI 2024), LabelDistill (ECCV 2024): "each newer method adds its own gain" compares each
# to the one before it.
RECIPES = ("cmkd", "focal", "simdistill", "labeldistill")
# store name -> the codec of each field cmkd reads (boxes are always fp32)
CODECS: dict[str, dict[str, str]] = {
    "fp32": {"lidar_bev": "fp32", "heatmap": "fp32", "box_regression": "fp32"},
    "uint8": {"lidar_bev": "uint8", "heatmap": "uint8", "box_regression": "uint8"},
    "uint4": {"lidar_bev": "uint4", "heatmap": "uint4", "box_regression": "uint4"},
    "pca8": {"lidar_bev": "pca-8", "heatmap": "uint4", "box_regression": "uint4"},
}
SEEDS, HEADLINE_SEEDS = [0, 1, 2], [0, 1, 2, 3, 4]
# The arms the headline claims rest on (cmkd against the baseline; the codec curve), which get
# HEADLINE_SEEDS; the codec arms are added by seeds_for.
HEADLINE = ("baseline", "cmkd")


def table_arms() -> dict[str, tuple[str, list[str]]]:
    """Arm name -> (config, overrides) of the recipe table."""
    arms: dict[str, tuple[str, list[str]]] = {
        "baseline": ("configs/demo/student_baseline.yaml",
                     ["student.unlabeled=false", f"train.epochs={epochs_for(LABELLED, STEPS)}"]),
    }  # fmt: skip
    for recipe in RECIPES:
        config = f"configs/demo/student_{recipe}.yaml"
        arms[recipe] = (
            config,
            ["student.unlabeled=false", f"train.epochs={epochs_for(LABELLED, STEPS)}"],
        )
        arms[f"{recipe} + unlabeled"] = (
            config, ["student.unlabeled=true", f"train.epochs={epochs_for(LABELLED + SWEEPS, STEPS)}"],
        )  # fmt: skip
        if recipe == "cmkd":
            arms["cmkd online"] = (config, [*arms["cmkd"][1], "train.targets=online"])
    return arms


def codec_store(name: str) -> str:
    return STORE if name == "uint8" else str(RESULTS / "stores" / f"{name}.zarr")


def codec_arms() -> dict[str, tuple[str, list[str]]]:
    """``cmkd`` on every codec store but the default one (that arm is the table's ``cmkd``)."""
    config, sets = table_arms()["cmkd"]
    return {
        f"cmkd {name}": (config, [*sets, f"student.store={codec_store(name)}"])
        for name in CODECS
        if name != "uint8"
    }


def seeds_for(name: str, seeds: list[int], headline_seeds: list[int]) -> list[int]:
    """``headline_seeds`` for the :data:`HEADLINE` and codec arms, ``seeds`` for the rest."""
    return headline_seeds if name in HEADLINE or name in codec_arms() else seeds


def folder(arm: str, seed: int) -> str:
    slug = arm.replace(" + ", "_").replace(" ", "_")
    return f"results/{slug}_seed{seed}"


def arm_store(name: str) -> str | None:
    """The store an arm reads teacher fields from (None for the baseline, which reads none)."""
    if name == "baseline":
        return None
    arms = {**table_arms(), **codec_arms()}
    sets = arms[name][1] if name in arms else []
    return next((x.split("=", 1)[1] for x in sets if x.startswith("student.store=")), STORE)


def finalized(url: str) -> bool:
    """Whether ``url`` holds a finished store."""
    from bevkd.storage.reader import open_store
    from bevkd.storage.schema import StoreError

    try:
        return bool(open_store(url).finalized)
    except (StoreError, FileNotFoundError):
        return False
