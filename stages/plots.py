"""Plots a person reads: loss curves (matplotlib, Agg backend, written as PNG)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path


def plot_loss_curve(log_path: str | Path, out_path: str | Path) -> Path | None:
    """One line per loss term from a ``train_log.jsonl``; returns the PNG path (None if no log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_path = Path(log_path)
    if not log_path.is_file():
        return None
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for line in log_path.read_text().splitlines():
        row = json.loads(line)
        for key, value in row.items():
            if key not in ("epoch", "step", "lr"):
                series[key].append((row["step"], value))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in sorted(series.items()):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(log_path.parent.name)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
