"""The figures of benchmarks/recipes.py's blocks (``docs/results_*.png``): mAP and car AP per
arm, the training loss curves of seed 0, and student accuracy against the store's KB/frame.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from recipe_arms import CODECS, OUT, RECIPES, codec_store, finalized, folder
from recipes_report import store_sizes, values


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
            if arm not in by_arm or not finalized(codec_store(name)):
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
