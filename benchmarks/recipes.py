"""The results table: every recipe against the baseline, with and without the unlabelled frames,
cached against online targets, over 5 seeds (the arms the headline rests on) or 3 (the rest);
and how far the store compresses before a student notices.

    .venv/bin/python benchmarks/recipes.py [--seeds 0 1 2] [--headline-seeds 0 1 2 3 4]
                                           [--parallel 2] [--part table codecs]
                                           [--report-only] [--fresh]

On the demo world (``make demo``'s: 72 labelled train frames, 72 unlabelled sweeps, 24 val
frames), with the demo's three teachers and store, built here if missing (``cache-teacher
--build-missing``: the world, the LiDAR, fusion and label-encoder teachers, the store).

**Table** (``--part table``), each arm a real ``bevkd train-student`` run of
``configs/demo/student_<recipe>.yaml`` under ``work/demo/results/<arm>_seed<n>``:

- ``baseline``: GT only;
- ``cmkd``, ``focal``, ``simdistill``, ``labeldistill``: on the labelled frames, and with the
  unlabelled sweeps added (``student.unlabeled=true``);
- ``cmkd online``: ``cmkd`` with the teacher run inside every step (``train.targets=online``),
  the cached-against-online comparison.

Every arm trains the same number of optimizer steps (:data:`STEPS` of batch 4): 8 epochs over
the 72 labelled frames, 4 over the 144 frames with the sweeps. The unlabelled arms see more
frames, not more steps.

**Codecs** (``--part codecs``): the demo LiDAR teacher cached again into stores that differ
only in their codecs (:data:`CODECS`: lossless fp32, the default uint8, 4-bit, and a per-frame
PCA of ``lidar_bev`` to 8 components at 4 bits), and ``cmkd`` trained on each. The
uint8 point is the table's ``cmkd`` arm: the same teacher values (checked here) and codec.
KB/frame counts the fields ``cmkd`` reads (``lidar_bev``, ``heatmap``, ``box_regression``,
``boxes``), measured on disk.

**Seeds**: ``--headline-seeds`` (5) for the arms the headline claims rest on (:data:`HEADLINE`:
``baseline``, ``cmkd`` and every codec arm), ``--seeds`` (3) for the rest.

**Verdicts** (:mod:`bevkd.stages.verdicts`): each directional claim is Welch's t-test on the
seeds, Holm-corrected over the family of its table (the directions table; the codec table),
printed with its p's and n's; a difference the test cannot resolve is "not distinguishable at
n = a/b", with the smallest difference it would have detected.

Resumable: a finished arm (its ``eval/metrics.json``, or its entry in the run ledger
``benchmarks/runs/``, which git keeps) is not run again, an interrupted one resumes from its
``last.pt``, a finished store is not cached again. A result made by other code than this
commit's clean tree is reused but marked † in the tables (``--fresh`` trains it again). Writes
the ``recipes`` and ``codecs`` blocks of ``docs/results.md`` and their figures
(``docs/results_*.png``), generated from the arms' own evaluations, and prints the same text.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from few_labels import BATCH, write_block
from few_labels import epochs as epochs_for

from bevkd.stages.demo_students import Arm, arm_metrics, train_arm
from bevkd.stages.run_ledger import dagger, footnote
from bevkd.stages.verdicts import Judged, family_line, judge, verdict_table

OUT = Path("work/demo")
STORE = "work/demo/teacher.zarr"
DATA = "work/demo/data"
RESULTS = OUT / "results"
DOCS = Path("docs")
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
CMKD_FIELDS = ("lidar_bev", "heatmap", "box_regression", "boxes")
METRICS = ("mAP", "car AP")
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


def build_main_store() -> None:
    """The demo world, its three teachers and store, unless the store is finished."""
    if _finalized(STORE):
        return
    print("[results] building the demo world, its teachers and store", flush=True)
    _cli("cache-teacher", "--config", "configs/demo/cache.yaml", "--build-missing")


def build_codec_stores() -> None:
    """The demo LiDAR teacher cached once per codec choice (train and val frames)."""
    for name, choice in CODECS.items():
        url = codec_store(name)
        if name == "uint8" or _finalized(url):
            continue
        pairs = ", ".join(f"[{field}, {codec}]" for field, codec in choice.items())
        print(f"[results] caching the LiDAR teacher into {url} ({name})", flush=True)
        _cli("cache-teacher", "--config", "configs/demo/cache.yaml",
             "--set", "cache.teachers=[lidar]", "--set", "cache.lidar_bev_scales=[1]",
             "--set", "cache.splits=[train, val]", "--set", f"store.url={url}",
             "--set", f"store.codecs=[{pairs}]")  # fmt: skip
    check_same_teacher()


def check_same_teacher(frames: int = 4) -> None:
    """The codec stores hold the main store's LiDAR teacher values: its fp32 store's
    ``lidar_bev`` equals the main store's within the main store's recorded codec error (so the
    table's ``cmkd`` arm is the codec curve's uint8 point). Raises if not."""
    import numpy as np

    from bevkd.storage.reader import open_store

    main, lossless = open_store(STORE), open_store(codec_store("fp32"))
    for token in lossless.tokens[:frames]:
        got = main.read_frame(main.index_of(token))
        want = lossless.read_frame(lossless.index_of(token))
        for field in ("lidar_bev", "heatmap", "box_regression"):
            bound = main.attrs["codec_error"][field]["max_abs"] * (1 + 1e-4) + 1e-6
            gap = float(np.abs(got[field] - want[field]).max())
            if gap > bound:
                sys.exit(
                    f"[results] {codec_store('fp32')} and {STORE} disagree on {field} of frame "
                    f"{token} by {gap:.3g} (> the uint8 codec's {bound:.3g}): not the same "
                    "teacher values; remove work/demo/results/stores and rerun"
                )


def _finalized(url: str) -> bool:
    from bevkd.storage.reader import open_store
    from bevkd.storage.schema import StoreError

    try:
        return bool(open_store(url).finalized)
    except (StoreError, FileNotFoundError):
        return False


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "bevkd.pipeline.cli", *args], check=True)


def run(arms: dict[str, tuple[str, list[str]]], seeds: list[int], headline_seeds: list[int],
        parallel: int, fresh: bool = False) -> None:  # fmt: skip
    """Every (arm, seed) (:func:`seeds_for`), seed by seed, ``parallel`` at once; a failed arm
    stops the run. ``fresh``: results marked as made by other code are trained again."""
    jobs = [
        (Arm(f"{name} (seed {seed})", config, folder(name, seed)), [*sets, f"train.seed={seed}"])
        for seed in sorted({*seeds, *headline_seeds})
        for name, (config, sets) in arms.items()
        if seed in seeds_for(name, seeds, headline_seeds)
    ]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(train_arm, arm, OUT, STORE, DATA, tuple(sets), fresh=fresh)
                   for arm, sets in jobs]  # fmt: skip
        for future in futures:
            future.result()


# ------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------


def arm_store(name: str) -> str | None:
    """The store an arm reads teacher fields from (None for the baseline, which reads none)."""
    if name == "baseline":
        return None
    arms = {**table_arms(), **codec_arms()}
    sets = arms[name][1] if name in arms else []
    return next((x.split("=", 1)[1] for x in sets if x.startswith("student.store=")), STORE)


def collect(names: list[str], seeds: list[int], headline_seeds: list[int]) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Arm -> the evaluations of its finished seeds (in seed order; :func:`seeds_for`)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        chosen = seeds_for(name, seeds, headline_seeds)
        store = arm_store(name)
        runs = [m for s in chosen if (m := arm_metrics(OUT / folder(name, s), store)) is not None]
        if runs:
            out[name] = runs
    return out


def values(runs: list[dict[str, Any]], metric: str) -> list[float]:
    return [m["class_ap"]["car"] if metric == "car AP" else m[metric] for m in runs]


def cell(xs: list[float], mark: str = "") -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}{mark}"
    return f"{statistics.mean(xs):.3f}{mark} ± {statistics.stdev(xs):.3f}"


def per_seed(runs: list[dict[str, Any]], metric: str) -> str:
    """Each seed's value, † on those made by other code than this commit's clean tree."""
    return ", ".join(
        f"{x:.3f}{dagger([r])}" for x, r in zip(values(runs, metric), runs, strict=True)
    )


def seeds_text(seeds: list[int], headline_seeds: list[int]) -> str:
    headline = ", ".join(HEADLINE)
    return (
        f"seeds {', '.join(map(str, headline_seeds))} for {headline} (the arms the headline rests "
        f"on), {', '.join(map(str, seeds))} for the rest"
    )


def recipe_block(by_arm: dict[str, list[dict[str, Any]]], seeds: list[int],
                 headline_seeds: list[int] = HEADLINE_SEEDS) -> str:  # fmt: skip
    base = by_arm.get("baseline")
    lines = [
        "## The recipes (generated by benchmarks/recipes.py)",
        "",
        f"Demo world: 72 labelled train frames, 72 unlabelled sweeps, 24 val frames (nuScenes "
        f"devkit, 10 classes). Every arm: {STEPS} optimizer steps of batch {BATCH} (8 epochs "
        "labelled; 4 epochs with the sweeps), one torch thread, the demo student configs. Mean ± "
        f"std over the seeds each arm finished (of {seeds_text(seeds, headline_seeds)}); Δ is "
        "against the baseline's mean.",
        "",
        "| arm | seeds | mAP | NDS | car AP | Δ mAP | Δ car AP | car AP per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in by_arm.items():
        delta = ["", ""]
        if base and name != "baseline":
            delta = [f"{statistics.mean(values(runs, k)) - statistics.mean(values(base, k)):+.3f}"
                     for k in METRICS]  # fmt: skip
        mark = dagger(runs)
        lines.append(
            f"| {name} | {len(runs)} | {cell(values(runs, 'mAP'), mark)} | "
            f"{cell(values(runs, 'NDS'), mark)} | {cell(values(runs, 'car AP'), mark)} | "
            f"{delta[0]} | {delta[1]} | {per_seed(runs, 'car AP')} |"
        )
    every = [r for runs in by_arm.values() for r in runs]
    if note := footnote(every):
        lines += ["", *note]
    lines += ["", "![mAP and car AP per arm](results_recipes.png)", "",
              "![loss curves, seed 0](results_loss_curves.png)", ""]  # fmt: skip
    lines += directions(by_arm)
    return "\n".join(lines) + "\n"


CACHED_ONLINE = "cmkd cached against online (Δ = cached − online)"


def claims(by_arm: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """(claim, arm, against) of every directional claim whose two arms ran: Δ = arm − against."""
    checks: list[tuple[str, str, str]] = []
    for recipe in RECIPES:
        checks.append((f"{recipe} beats the baseline", recipe, "baseline"))
    for recipe in RECIPES:
        checks.append((f"unlabelled frames add to {recipe}", f"{recipe} + unlabeled", recipe))
    for older, newer in itertools.pairwise(RECIPES):
        checks.append((f"{newer} adds to {older} (newer method)", newer, older))
    checks.append((CACHED_ONLINE, "cmkd", "cmkd online"))
    return [c for c in checks if c[1] in by_arm and c[2] in by_arm]


def readme_block(by_arm: dict[str, list[dict[str, Any]]]) -> str:
    """The README's recipes block: each arm's car AP and what holds of the seeds' directions
    (:func:`bevkd.stages.verdicts.summary` of the same family as :func:`directions`)."""
    from bevkd.stages.verdicts import summary

    checks = claims(by_arm)
    pairs = {(claim, metric): (values(by_arm[arm], metric), values(by_arm[against], metric))
             for claim, arm, against in checks for metric in METRICS}  # fmt: skip
    rows = [f"| {name} | {len(runs)} | {cell(values(runs, 'car AP'))} |"
            for name, runs in by_arm.items()]  # fmt: skip
    held = summary(verdict_table(pairs, METRICS)[1]) if pairs else []
    return "\n".join([
        "Car AP on val, mean ± std over seeds (`make results`):", "",
        "| arm | seeds | car AP |", "|---|---|---|", *rows, "",
        "Welch's t-test, Holm over the table's comparisons (α = 0.05):", "", *held,
    ]) + "\n"  # fmt: skip


def directions(by_arm: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every claim of :func:`claims` judged on mAP and car AP, one family (Welch's t, Holm over
    the table); the directions that do not hold are listed as findings."""
    checks = claims(by_arm)
    pairs = {(claim, metric): (values(by_arm[arm], metric), values(by_arm[against], metric))
             for claim, arm, against in checks for metric in METRICS}  # fmt: skip
    table, judged = verdict_table(pairs, METRICS)
    lines = ["### The seeds' directions", "", *table, ""]
    missed = []
    for claim, _, _ in checks:
        got = [judged[(claim, m)] for m in METRICS]
        cells = f"mAP {got[0].text}; car AP {got[1].text}"
        outcomes = {j.outcome for j in got}
        if claim == CACHED_ONLINE:
            if outcomes & {"holds", "reversed"}:
                missed.append(
                    f"- **Cached and online cmkd differ:** {cells}. Under augmentation the cached "
                    "(warped) and online targets are different targets for a learned teacher "
                    "(the stage-two block below measures how far apart)."
                )
            elif "not distinguishable" in outcomes:
                missed.append(
                    f"- Cached and online cmkd are not distinguishable ({cells}), which does not "
                    "make them equal: a difference below the detectable one can hide in the "
                    "seeds' spread."
                )
        elif outcomes == {"untested"}:
            missed.append(f"- **Not tested: {claim}** (fewer than 2 seeds in an arm).")
        elif "holds" not in outcomes:
            missed.append(f"- **Not reproduced: {claim}.** {cells}.")
    if missed:
        lines += ["Directions this run does not reproduce (findings, not tuned away):", "", *missed]
    elif not judged:
        lines += ["No direction is judged yet: the table's arms have not all run."]
    else:
        lines += ["Every direction above holds on at least one metric."]
    return lines


@functools.cache
def store_sizes(name: str) -> dict[str, Any]:
    """KB/frame of the fields cmkd reads in a codec store, against raw fp32 and the recorded
    relative RMS codec error of each field."""
    import numpy as np

    from bevkd.storage.reader import open_store

    store = open_store(codec_store(name))
    stored = store.attrs["stored"]
    fields = {f.name: f for f in store.contract.fields}
    kb = sum(stored[f]["bytes"] / stored[f]["frames"] for f in CMKD_FIELDS) / 1024
    raw = sum(int(np.prod(fields[f].shape)) * 4 for f in CMKD_FIELDS) / 1024
    errors = {f: store.attrs["codec_error"][f]["rel_rms"] for f in CMKD_FIELDS if f != "boxes"}
    return {"kb": kb, "raw_kb": raw, "errors": errors}


def codec_block(by_arm: dict[str, list[dict[str, Any]]], seeds: list[int],
                headline_seeds: list[int] = HEADLINE_SEEDS) -> str:  # fmt: skip
    rows = []
    for name, choice in CODECS.items():
        arm = "cmkd" if name == "uint8" else f"cmkd {name}"
        if arm not in by_arm or not _finalized(codec_store(name)):
            continue
        rows.append((name, choice, store_sizes(name), by_arm[arm]))
    lines = [
        "## Store codec against student accuracy (generated by benchmarks/recipes.py)",
        "",
        f"`cmkd` ({STEPS} steps, seeds {', '.join(map(str, headline_seeds))}) on stores of the "
        "same demo LiDAR teacher that differ only in their codecs. KB/frame: the fields cmkd reads "
        "(`lidar_bev` 64x64x64, `heatmap` and `box_regression` 10x64x64, `boxes`), on disk "
        '(zstd level 1); "vs fp32" is raw float32 (the convention of `bevkd store info`), "vs '
        "lossless\" the fp32 store on disk. The uint8 row is the table's `cmkd` arm (same teacher "
        "values, checked). Δ: the store's student against the lossless store's (*holds*: the "
        "store's student is better, *reversed*: worse).",
        "",
        "| store | codecs (lidar_bev / heatmap / box_regression) | KB/frame | vs fp32 | vs lossless "
        "| rel. RMS error (bev / heatmap / regression) | mAP | car AP | Δ mAP vs lossless "
        "| Δ car AP vs lossless |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lossless = next((r for r in rows if r[0] == "fp32"), None)
    judged: dict[tuple[str, str], Judged] = {}
    if lossless:
        judged = judge({(name, k): (values(runs, k), values(lossless[3], k))
                        for name, _, _, runs in rows if name != "fp32" for k in METRICS})  # fmt: skip
    kept = []
    for name, choice, size, runs in rows:
        ratio_lossless = f"{lossless[2]['kb'] / size['kb']:.1f}x" if lossless else "-"
        err = " / ".join(f"{size['errors'][f]:.3g}" for f in CMKD_FIELDS[:3])
        delta = [judged[(name, k)].text if (name, k) in judged else "" for k in METRICS]
        # kept: tested on both metrics and not distinguishably worse than lossless on either
        if (name, "mAP") in judged and all(
            judged[(name, k)].outcome in ("holds", "not distinguishable") for k in METRICS
        ):
            kept.append((size["kb"], name, size))
        mark = dagger(runs)
        lines.append(
            f"| {name} | {' / '.join(choice[f] for f in CMKD_FIELDS[:3])} | {size['kb']:.1f} | "
            f"{size['raw_kb'] / size['kb']:.1f}x | {ratio_lossless} | {err} | "
            f"{cell(values(runs, 'mAP'), mark)} | {cell(values(runs, 'car AP'), mark)} | "
            f"{delta[0]} | {delta[1]} |"
        )
    if judged:
        lines += ["", family_line(judged)]
    if note := footnote([r for row in rows for r in row[3]]):
        lines += ["", *note]
    lines += ["", "![mAP against KB/frame](results_codecs.png)", ""]
    if lossless and kept:
        kb, name, size = min(kept)
        ratio = size["raw_kb"] / kb
        goal = "met" if ratio >= 20 else "not met"
        found = [judged[(name, k)] for k in METRICS]
        n = f"{found[0].welch.n_a}/{found[0].welch.n_b}"
        lines.append(
            f"Smallest store not distinguishably worse than lossless on mAP and car AP: **{name}**, "
            f"{kb:.1f} KB/frame, **{ratio:.1f}x** smaller than raw fp32 and "
            f"{lossless[2]['kb'] / kb:.1f}x smaller than the lossless store on disk (goal >= 20x "
            f"against fp32: {goal}). Not distinguishable does not mean lossless: at n = {n} the test "
            f"would catch a loss of {found[0].detectable:.3f} mAP or {found[1].detectable:.3f} "
            "car AP (80% power); a smaller one can hide in the seeds' spread."
        )
    elif lossless:
        lines.append(
            "No compressed store is both tested and not distinguishably worse than lossless on "
            "mAP and car AP."
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recipes(by_arm: dict[str, list[dict[str, Any]]], path: Path) -> None:
    plt = _pyplot()
    names = list(by_arm)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("mAP", "car AP"), strict=True):
        means = [statistics.mean(values(by_arm[n], metric)) for n in names]
        stds = [statistics.stdev(values(by_arm[n], metric)) if len(by_arm[n]) > 1 else 0
                for n in names]  # fmt: skip
        colours = ["0.5" if n == "baseline" else "C1" if "unlabeled" in n else
                   "C2" if "online" in n else "C0" for n in names]  # fmt: skip
        ax.bar(range(len(names)), means, yerr=stds, color=colours, capsize=3)
        for i, n in enumerate(names):
            ax.plot([i] * len(by_arm[n]), values(by_arm[n], metric), "k.", ms=4)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"{metric} (val)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("demo students: mean ± std over seeds (dots: each seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss_curves(names: list[str], path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Total training loss against the step (the log's running means), seed 0, one panel per
    recipe; returns the curves drawn (arm -> steps, losses). Arms with the sweeps log fewer GT
    terms (unlabelled frames have none), so their total sits apart from the labelled arm's by
    construction."""
    plt = _pyplot()
    curves: dict[str, tuple[list[int], list[float]]] = {}
    groups = ["baseline", *RECIPES]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        for name in names:
            if name.split(" ")[0] != group:
                continue
            log = OUT / folder(name, 0) / "train_log.jsonl"
            if not log.is_file():
                continue
            rows = [json.loads(line) for line in log.read_text().splitlines()]
            rows = [r for r in rows if "loss" in r]  # not the validation rows
            curves[name] = ([r["step"] for r in rows], [r["loss"] for r in rows])
            ax.plot(*curves[name], label=name)
        ax.set_title(group, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training loss (seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return curves


def plot_codecs(by_arm: dict[str, list[dict[str, Any]]], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("mAP", "car AP"), strict=True):
        for name in CODECS:
            arm = "cmkd" if name == "uint8" else f"cmkd {name}"
            if arm not in by_arm or not _finalized(codec_store(name)):
                continue
            kb = store_sizes(name)["kb"]
            xs = values(by_arm[arm], metric)
            std = statistics.stdev(xs) if len(xs) > 1 else 0
            ax.errorbar([kb], [statistics.mean(xs)], yerr=[std], fmt="o", capsize=4)
            ax.plot([kb] * len(xs), xs, "k.", ms=3)
            ax.annotate(name, (kb, statistics.mean(xs)), textcoords="offset points", xytext=(6, 4))
        ax.set_xscale("log")
        ticks = [25, 50, 100, 200, 400, 800]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("store KB/frame (fields cmkd reads)")
        ax.set_ylabel(f"cmkd student {metric} (val)")
        ax.grid(alpha=0.3)
    fig.suptitle("store codec against student accuracy (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS,
                        help="seeds of the arms the headline does not rest on")  # fmt: skip
    parser.add_argument("--headline-seeds", nargs="+", type=int, default=HEADLINE_SEEDS,
                        help="seeds of baseline, cmkd and the codec arms")  # fmt: skip
    parser.add_argument("--parallel", type=int, default=2, help="arms at once (1 thread each)")
    parser.add_argument("--part", nargs="+", choices=("table", "codecs"),
                        default=["table", "codecs"])  # fmt: skip
    parser.add_argument("--report-only", action="store_true",
                        help="write the blocks from the arms already evaluated; train nothing")  # fmt: skip
    parser.add_argument("--fresh", action="store_true",
                        help="train again the arms whose result other code made (marked †)")  # fmt: skip
    args = parser.parse_args()
    started = time.perf_counter()
    table, codec = table_arms(), codec_arms()
    if not args.report_only:
        build_main_store()
        if "codecs" in args.part:
            build_codec_stores()
        arms = {**(table if "table" in args.part else {}),
                **({"cmkd": table["cmkd"], **codec} if "codecs" in args.part else {})}  # fmt: skip
        run(arms, args.seeds, args.headline_seeds, args.parallel, args.fresh)
    text = ""
    by_arm = collect(list(table), args.seeds, args.headline_seeds)
    if by_arm:
        DOCS.mkdir(exist_ok=True)
        plot_recipes(by_arm, DOCS / "results_recipes.png")
        plot_loss_curves(list(table), DOCS / "results_loss_curves.png")
        block = recipe_block(by_arm, args.seeds, args.headline_seeds)
        write_block(DOCS / "results.md", "recipes", block)
        write_block(Path("README.md"), "recipes-readme", readme_block(by_arm))
        text += block
    by_codec = collect(["cmkd", *codec], args.seeds, args.headline_seeds)
    if any(name in by_codec for name in codec):
        plot_codecs(by_codec, DOCS / "results_codecs.png")
        block = codec_block(by_codec, args.seeds, args.headline_seeds)
        write_block(DOCS / "results.md", "codecs", block)
        text += "\n" + block
    print(text or "no arm evaluated yet")
    print(f"[results] {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
