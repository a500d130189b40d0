"""benchmarks/recipes.py's report: which seeds each arm runs, when a direction holds (Welch's
t, Holm over the table's family), which store is kept, and what the loss-curve figure draws.
Expected p's are worked out here from the textbook formulas, not by the code under test."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterator
from typing import Any

import pytest
from scipy import stats
from stage_helpers import benchmark_module


@pytest.fixture(scope="module")
def recipes() -> Iterator[Any]:
    yield from benchmark_module("recipes")


@pytest.fixture(scope="module")
def report() -> Iterator[Any]:
    yield from benchmark_module("recipes_report")


@pytest.fixture(scope="module")
def figures() -> Iterator[Any]:
    yield from benchmark_module("recipe_figures")


def _runs(car: list[float], m_ap: list[float] | None = None) -> list[dict[str, Any]]:
    m_ap = m_ap or [c / 10 for c in car]
    return [{"mAP": m, "NDS": m, "class_ap": {"car": c}} for c, m in zip(car, m_ap, strict=True)]


def welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(t, Welch-Satterthwaite df, two-sided p), from the textbook formulas."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, df, 2 * stats.t.sf(abs(t), df)


def test_headline_arms_run_five_seeds_the_rest_three(recipes: Any, monkeypatch) -> None:
    assert recipes.SEEDS == [0, 1, 2] and recipes.HEADLINE_SEEDS == [0, 1, 2, 3, 4]
    for name in ("baseline", "cmkd", "cmkd fp32", "cmkd uint4", "cmkd pca8"):
        assert recipes.seeds_for(name, [0, 1, 2], [0, 1, 2, 3, 4]) == [0, 1, 2, 3, 4]
    for name in ("focal", "cmkd online", "cmkd + unlabeled", "labeldistill + unlabeled"):
        assert recipes.seeds_for(name, [0, 1, 2], [0, 1, 2, 3, 4]) == [0, 1, 2]
    trained = []
    monkeypatch.setattr(recipes, "train_arm", lambda arm, *a, fresh: trained.append((arm.folder, fresh)))  # fmt: skip
    arms = {**recipes.table_arms(), **recipes.codec_arms()}
    recipes.run(arms, [0, 1, 2], [0, 1, 2, 3, 4], parallel=1, fresh=True)
    # 10 table arms + 3 codec arms: baseline, cmkd and the 3 codec arms 5 seeds, 8 arms 3 seeds
    assert len(trained) == 5 * 5 + 8 * 3 and all(fresh for _, fresh in trained)
    assert ("results/cmkd_pca8_seed4", True) in trained
    assert ("results/focal_seed3", True) not in trained
    assert [f for f, _ in trained][-5:] == [f"results/{a}_seed4" for a in
                                            ("baseline", "cmkd", "cmkd_fp32", "cmkd_uint4", "cmkd_pca8")]  # fmt: skip


BASE = [0.20, 0.21, 0.19, 0.22, 0.18]
CMKD = [0.30, 0.31, 0.29, 0.32, 0.28]
ONLINE = [0.26, 0.27, 0.28]


def _directions_world() -> dict[str, list[dict[str, Any]]]:
    return {
        "baseline": _runs(BASE),
        "cmkd": _runs(CMKD),  # beats the baseline: t = 0.1 / 0.01 = 10, df 8
        "cmkd + unlabeled": _runs([0.30, 0.28, 0.32]),  # adds nothing to cmkd: Δ 0
        "focal": _runs([0.10, 0.11, 0.09]),  # below the baseline and cmkd
        "cmkd online": _runs(ONLINE),  # Δ +0.03: p = 0.017 alone, not after Holm over 10
    }


def test_directions_are_welch_with_holm_over_the_table(report: Any) -> None:
    lines = "\n".join(report.directions(_directions_world()))
    # cmkd - baseline: equal spreads and n, so t = 0.1 / sqrt(2 x 0.00025 / 5) = 10 and df = 8
    t, df, p = welch_by_hand(CMKD, BASE)
    assert t == pytest.approx(10) and df == pytest.approx(8) and 10 * p < 0.001
    assert "| cmkd beats the baseline | holds (Δ +0.010, Welch p < 0.001, Holm p < 0.001, " \
           "n = 5/5) | holds (Δ +0.100, Welch p < 0.001, Holm p < 0.001, n = 5/5) |" in lines  # fmt: skip
    # cached - online, car AP: p = 0.017 alone (the old "two standard errors" rule called it a
    # difference: 0.03 > 2 x 0.0091). Of the 10 comparisons it has the 7th smallest p (after
    # focal vs cmkd, cmkd vs baseline and focal vs baseline, two metrics each, all p < 1e-4), so
    # Holm multiplies it by 10 - 7 + 1 = 4: 0.068, not <= 0.05.
    t, df, p = welch_by_hand(CMKD, ONLINE)
    assert 0.015 < p < 0.02 and 2 * 0.03 / t < 0.03
    assert (
        f"| cmkd cached against online (Δ = cached − online) | not distinguishable at n = 5/3 "
        f"(Δ +0.003, Welch p = {p:.2g}, Holm p = {4 * p:.2g}; detectable ≥ "
    ) in lines
    assert f"not distinguishable at n = 5/3 (Δ +0.030, Welch p = {p:.2g}, Holm p = {4 * p:.2g}" in lines  # fmt: skip
    assert "Holm over the 10 comparisons of this table, α = 0.05" in lines
    assert "**Not reproduced: unlabelled frames add to cmkd.** mAP not distinguishable at n = 3/5 (Δ +0.000, Welch p = 1" in lines  # fmt: skip
    assert "**Not reproduced: focal beats the baseline.** mAP reversed (Δ -0.010, " in lines
    assert "**Not reproduced: focal adds to cmkd (newer method).** mAP reversed" in lines
    assert "Not reproduced: cmkd beats" not in lines
    assert "- Cached and online cmkd are not distinguishable (mAP not distinguishable" in lines
    assert "Cached and online cmkd differ" not in lines
    assert "within noise" not in lines and "the same" not in lines
    # arms that did not run are left out, not judged
    assert "simdistill" not in lines and "labeldistill" not in lines


def test_a_direction_with_one_seed_is_untested_not_judged(report: Any) -> None:
    by_arm = {"baseline": _runs(BASE), "cmkd": _runs([0.3]), "cmkd online": _runs(ONLINE)}
    lines = "\n".join(report.directions(by_arm))
    assert "| cmkd beats the baseline | untested at n = 1/5: fewer than 2 values in an arm" in lines
    assert "**Not tested: cmkd beats the baseline** (fewer than 2 seeds in an arm)." in lines
    assert "Holm over the 0 comparisons of this table, α = 0.05 (4 untested" in lines


def test_recipe_table_marks_results_other_code_made(report: Any) -> None:
    by_arm = _directions_world()
    by_arm["cmkd"][1] = {**by_arm["cmkd"][1], "reused": {"commit": "0123456789abc", "dirty": False}}
    text = report.recipe_block(by_arm, [0, 1, 2], [0, 1, 2, 3, 4])
    assert "(of seeds 0, 1, 2, 3, 4 for baseline, cmkd (the arms the headline rests on), 0, 1, 2 for the rest)" in text  # fmt: skip
    # mean ± sample std: car 0.300 ± sqrt(0.00025) = 0.016, mAP a tenth of it
    assert ("| cmkd | 5 | 0.030† ± 0.002 | 0.030† ± 0.002 | 0.300† ± 0.016 | +0.010 | +0.100 | "
            "0.300, 0.310†, 0.290, 0.320, 0.280 |") in text  # fmt: skip
    assert "| baseline | 5 | 0.020 ± 0.002 | 0.020 ± 0.002 | 0.200 ± 0.016 |  |  | 0.200, " in text
    assert (
        "other code than the report's: 0123456789 (" in text
        and "`--fresh` trains them again" in text
    )
    clean = report.recipe_block(_directions_world(), [0, 1, 2], [0, 1, 2, 3, 4])
    assert "†" not in clean


FP32 = ([0.20, 0.21, 0.19, 0.22, 0.18], [0.100, 0.102, 0.098, 0.104, 0.096])
UINT8 = ([0.21, 0.20, 0.22, 0.19, 0.24], [0.103, 0.105, 0.101, 0.107, 0.099])
UINT4 = ([0.19, 0.20, 0.18, 0.21, 0.17], [0.099, 0.101, 0.097, 0.103, 0.095])
PCA8 = ([0.10, 0.11, 0.09, 0.12, 0.08], [0.050, 0.052, 0.048, 0.054, 0.046])


def test_codec_block_keeps_the_smallest_store_not_distinguishably_worse(
    report: Any, monkeypatch
) -> None:
    sizes = {"fp32": 600.0, "uint8": 160.0, "uint4": 68.0, "pca8": 33.0}
    monkeypatch.setattr(report, "finalized", lambda url: True)
    monkeypatch.setattr(
        report,
        "store_sizes",
        lambda name: {"kb": sizes[name], "raw_kb": 1360.0, "errors": dict.fromkeys(
            ("lidar_bev", "heatmap", "box_regression"), 0.1)},
    )  # fmt: skip
    by_arm = {"cmkd fp32": _runs(*FP32), "cmkd": _runs(*UINT8), "cmkd uint4": _runs(*UINT4),
              "cmkd pca8": _runs(*PCA8)}  # fmt: skip
    text = report.codec_block(by_arm, [0, 1, 2], [0, 1, 2, 3, 4])
    assert "| pca8 | pca-8 / uint4 / uint4 | 33.0 | 41.2x | 18.2x |" in text
    # By hand, against fp32: pca8 t = -25 (mAP) and -10 (car); uint8 mAP Δ +0.003 (t = 1.5)
    # and car Δ +0.012; uint4 car Δ -0.010 (t = -1) and mAP Δ -0.001 (t = -0.5). Six p's:
    p = {k: welch_by_hand(v, FP32[i])[2] for k, v, i in
         (("pca8 mAP", PCA8[1], 1), ("pca8 car", PCA8[0], 0), ("uint8 mAP", UINT8[1], 1),
          ("uint8 car", UINT8[0], 0), ("uint4 car", UINT4[0], 0), ("uint4 mAP", UINT4[1], 1))}  # fmt: skip
    assert list(p) == sorted(p, key=p.get)  # written in ascending order
    # Holm: 6, 5, 4, 3, 2, 1 times each, running maximum
    assert 5 * p["pca8 car"] < 0.001 and 3 * p["uint8 car"] > 4 * p["uint8 mAP"]
    holm_uint4_car = max(3 * p["uint8 car"], 2 * p["uint4 car"])
    assert ("| reversed (Δ -0.050, Welch p < 0.001, Holm p < 0.001, n = 5/5) | reversed (Δ -0.100, "
            "Welch p < 0.001, Holm p < 0.001, n = 5/5) |") in text  # fmt: skip
    assert (f"not distinguishable at n = 5/5 (Δ -0.010, Welch p = {p['uint4 car']:.2g}, "
            f"Holm p = {holm_uint4_car:.2g}; detectable ≥ ") in text  # fmt: skip
    assert "Holm over the 6 comparisons of this table, α = 0.05" in text
    assert "**uint4**, 68.0 KB/frame, **20.0x** smaller than raw fp32" in text
    assert "goal >= 20x against fp32: met" in text
    # The detectable losses of uint4, stated at the family's alpha / m = 0.05 / 6 for both;
    # se 0.002 (mAP) and 0.01 (car AP), df 8. Against the shifted-t approximation
    # d ~ se (t_(1 - level/2), df + t_(power), df):
    found = re.search(r"would catch a loss of ([0-9.]+) mAP or ([0-9.]+) car AP", text)
    assert found is not None
    for got, se, level in ((found.group(1), 0.002, 0.05 / 6), (found.group(2), 0.01, 0.05 / 6)):
        want = se * (stats.t.isf(level / 2, 8) + stats.t.isf(0.2, 8))
        assert float(got) == pytest.approx(want, rel=0.05, abs=5e-4)  # 3 decimals; an approximation
    by_arm["cmkd uint4"] = _runs([0.05, 0.06, 0.07], [0.01, 0.02, 0.03])
    text = report.codec_block(by_arm, [0, 1, 2], [0, 1, 2, 3, 4])
    assert "**uint8**, 160.0 KB/frame, **8.5x**" in text and "not met" in text
    by_arm["cmkd"] = _runs([0.05, 0.06, 0.07], [0.01, 0.02, 0.03])
    text = report.codec_block(by_arm, [0, 1, 2], [0, 1, 2, 3, 4])
    assert "No compressed store is both tested and not distinguishably worse" in text
    assert "within noise" not in text


def test_loss_curves_draw_the_loss_rows_not_the_validation_rows(
    recipes: Any, figures: Any, monkeypatch, tmp_path
) -> None:
    """A training log interleaves loss rows with validation rows (no ``loss`` key): the figure
    draws each arm's loss rows, and arms without a seed-0 log are left out."""
    monkeypatch.setattr(figures, "OUT", tmp_path)
    rows = [{"epoch": 1, "step": 10, "loss": 3.0}, {"epoch": 1, "step": 18, "val_NDS": 0.1},
            {"epoch": 2, "step": 20, "loss": 2.5}]  # fmt: skip
    for name in ("baseline", "cmkd", "cmkd online"):
        log = tmp_path / figures.folder(name, 0) / "train_log.jsonl"
        log.parent.mkdir(parents=True)
        log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "curves.png"
    curves = figures.plot_loss_curves(list(recipes.table_arms()), out)
    assert curves == {name: ([10, 20], [3.0, 2.5]) for name in ("baseline", "cmkd", "cmkd online")}
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_readme_block_quotes_only_what_holds(report: Any) -> None:
    base = [0.20, 0.22, 0.24, 0.21, 0.23]
    by_arm = {
        "baseline": [{"mAP": c / 10, "NDS": 0.0, "class_ap": {"car": c}} for c in base],
        "cmkd": [{"mAP": c / 10 + 0.01, "NDS": 0.0, "class_ap": {"car": c + 0.1}} for c in base],
        "focal": [{"mAP": c / 10, "NDS": 0.0, "class_ap": {"car": c + 0.001 * (-1) ** i}}
                  for i, c in enumerate(base)],
    }  # fmt: skip
    text = report.readme_block(by_arm)
    assert "| cmkd | 5 | 0.320 ± 0.016 |" in text and "| baseline | 5 | 0.220 ± 0.016 |" in text
    assert "- **Holds:** cmkd beats the baseline (car AP): holds (Δ +0.100" in text
    assert "**Holds:** focal beats" not in text
    assert "focal beats the baseline (car AP)" in text.split("Not distinguishable")[1]
