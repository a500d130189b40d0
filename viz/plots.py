"""Plots a person reads: loss curves (matplotlib, Agg backend, written as PNG)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

# Columns of a training log that are not loss terms (validation columns start with "val_").
NOT_LOSSES = {"epoch", "step", "lr", "samples_per_s", "data_wait_frac"}


def plot_loss_curve(log_path: str | Path, out_path: str | Path) -> Path | None:
    """One line per loss term from a ``train_log.jsonl`` (and a second panel with the validation
    metric when the log has one); returns the PNG path (None if no log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_path = Path(log_path)
    if not log_path.is_file():
        return None
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    validation: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for line in log_path.read_text().splitlines():
        row = json.loads(line)
        for key, value in row.items():
            if key.startswith("val_"):
                validation[key[4:]].append((row["step"], value))
            elif key not in NOT_LOSSES and isinstance(value, int | float):
                series[key].append((row["step"], value))
    if not series:
        return None
    fig, axes = plt.subplots(
        1, 2 if validation else 1, figsize=(11 if validation else 7, 4), squeeze=False
    )
    ax = axes[0, 0]
    for name, points in sorted(series.items()):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(log_path.parent.name)
    if validation:
        val_ax = axes[0, 1]
        for name, points in sorted(validation.items()):
            steps, values = zip(*points, strict=True)
            val_ax.plot(steps, values, marker="o", label=name)
        val_ax.set_xlabel("optimizer step")
        val_ax.set_ylabel("validation")
        val_ax.grid(alpha=0.3)
        val_ax.legend()
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
