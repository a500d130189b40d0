"""benchmarks/recipes.py's verdicts: when a seed's direction holds, and which store is kept."""

from __future__ import annotations

import importlib
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def recipes() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("recipes")
    finally:
        sys.path.remove(str(BENCHMARKS))


def _runs(car: list[float], m_ap: list[float] | None = None) -> list[dict[str, Any]]:
    m_ap = m_ap or [c / 10 for c in car]
    return [{"mAP": m, "NDS": m, "class_ap": {"car": c}} for c, m in zip(car, m_ap, strict=True)]


def test_verdict_is_two_standard_errors_of_the_difference(recipes: Any) -> None:
    a, b = [0.30, 0.32, 0.34], [0.20, 0.21, 0.22]
    se = (statistics.variance(a) / 3 + statistics.variance(b) / 3) ** 0.5
    diff, text = recipes.verdict(a, b)
    assert diff == pytest.approx(0.11) and text.startswith("holds") and f"{2 * se:.3f}" in text
    assert recipes.verdict(b, a)[1].startswith("reversed")
    # The same difference of means with a wide spread is noise.
    assert recipes.verdict([0.10, 0.32, 0.54], [0.00, 0.21, 0.42])[1].startswith("within noise")
    assert recipes.verdict([0.3], [0.2])[1] == "one seed: no noise estimate"


def test_directions_list_each_claim_that_does_not_hold(recipes: Any) -> None:
    by_arm = {
        "baseline": _runs([0.20, 0.21, 0.19]),
        "cmkd": _runs([0.30, 0.31, 0.29]),  # beats the baseline
        "cmkd + unlabeled": _runs([0.30, 0.28, 0.32]),  # adds nothing to cmkd
        "focal": _runs([0.10, 0.11, 0.09]),  # below the baseline and cmkd
        "cmkd online": _runs([0.29, 0.31, 0.30]),
    }
    lines = "\n".join(recipes.directions(by_arm))
    assert "| cmkd beats the baseline | holds" in lines
    assert "**Not reproduced: unlabelled frames add to cmkd.**" in lines
    assert "**Not reproduced: focal beats the baseline.** mAP reversed" in lines
    assert "**Not reproduced: focal adds to cmkd (newer method).**" in lines
    assert "Not reproduced: cmkd beats" not in lines
    assert "| cached equals online for cmkd (cached − online) | within noise" in lines
    assert "Cached and online cmkd differ" not in lines
    # arms that did not run are left out, not judged
    assert "simdistill" not in lines and "labeldistill" not in lines


def test_codec_block_keeps_the_smallest_store_within_noise(recipes: Any, monkeypatch) -> None:
    sizes = {"fp32": 600.0, "uint8": 160.0, "uint4": 68.0, "pca8": 33.0}
    monkeypatch.setattr(recipes, "_finalized", lambda url: True)
    monkeypatch.setattr(
        recipes,
        "store_sizes",
        lambda name: {"kb": sizes[name], "raw_kb": 1360.0, "errors": dict.fromkeys(
            ("lidar_bev", "heatmap", "box_regression"), 0.1)},
    )  # fmt: skip
    by_arm = {
        "cmkd fp32": _runs([0.20, 0.22, 0.21]),
        "cmkd": _runs([0.21, 0.20, 0.22]),
        "cmkd uint4": _runs([0.22, 0.19, 0.21]),
        "cmkd pca8": _runs([0.10, 0.11, 0.09]),  # breaks
    }
    text = recipes.codec_block(by_arm, [0, 1, 2])
    assert "| pca8 | pca-8 / uint4 / uint4 | 33.0 | 41.2x | 18.2x |" in text
    assert "**uint4**, 68.0 KB/frame, **20.0x** smaller than raw fp32" in text
    assert "goal >= 20x against fp32: met" in text
    by_arm["cmkd uint4"] = _runs([0.05, 0.06, 0.07])
    text = recipes.codec_block(by_arm, [0, 1, 2])
    assert "**uint8**, 160.0 KB/frame, **8.5x**" in text and "not met" in text


def test_loss_curves_read_logs_with_validation_rows(recipes: Any, monkeypatch, tmp_path) -> None:
    """A training log interleaves loss rows with validation rows (no ``loss`` key)."""
    import json

    monkeypatch.setattr(recipes, "OUT", tmp_path)
    for name in ("baseline", "cmkd", "cmkd online"):
        log = tmp_path / recipes.folder(name, 0) / "train_log.jsonl"
        log.parent.mkdir(parents=True)
        rows = [{"epoch": 1, "step": 10, "loss": 3.0}, {"epoch": 1, "step": 18, "val_NDS": 0.1}]
        log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "curves.png"
    recipes.plot_loss_curves(list(recipes.table_arms()), out)
    assert out.stat().st_size > 10_000
