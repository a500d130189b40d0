"""eval/verdicts.py against expectations worked out independently of it: Welch's t by its
textbook formulas, Holm's adjusted p's by hand, the detectable difference against Cohen's
power tables, the normal approximation and a simulation."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats

from bevkd.eval.verdicts import (
    detectable_difference,
    family_line,
    holm,
    holm_levels,
    judge,
    verdict,
    verdict_table,
    welch,
)

A, B = [0.30, 0.32, 0.34], [0.20, 0.21, 0.22]


def test_welch_matches_the_textbook_formulas() -> None:
    # By hand: means 0.32 and 0.21; variances 0.0004 and 0.0001 (ddof 1); se^2 = 0.0005 / 3;
    # Welch-Satterthwaite df = (se^2)^2 / ((0.0004/3)^2 / 2 + (0.0001/3)^2 / 2) = 50 / 17.
    se = math.sqrt(0.0005 / 3)
    t = 0.11 / se
    df = 50 / 17
    w = welch(A, B)
    assert w.diff == pytest.approx(0.11) and w.se == pytest.approx(se)
    assert w.t == pytest.approx(t) and w.df == pytest.approx(df)
    assert w.p == pytest.approx(2 * stats.t.sf(t, df))
    assert (w.n_a, w.n_b, w.untested) == (3, 3, "")
    # unequal n and spreads: the same formulas, written out again
    a, b = [0.1, 0.4, 0.2, 0.5, 0.3], [0.2, 0.25]
    va, vb = statistics.variance(a) / 5, statistics.variance(b) / 2
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 1)
    w = welch(a, b)
    assert w.t == pytest.approx(t) and w.df == pytest.approx(df)
    assert w.p == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert welch(B, A).t == pytest.approx(-welch(A, B).t)


def test_welch_says_when_there_is_no_test() -> None:
    one = welch([0.3], B)
    assert math.isnan(one.p) and one.diff == pytest.approx(0.09)
    assert one.untested == "fewer than 2 values in an arm"
    flat = welch([0.3, 0.3], [0.2, 0.2])
    assert math.isnan(flat.p) and flat.untested == "no spread in either arm"
    with pytest.raises(ValueError, match="no values"):
        welch([], B)


def test_holm_against_hand_worked_adjusted_p() -> None:
    # sorted: D .005, A .01, C .03, B .04 (m = 4) -> 4 x .005 = .02; max(.02, 3 x .01) = .03;
    # max(.03, 2 x .03) = .06; max(.06, 1 x .04) = .06 (monotone)
    got = holm({"A": 0.01, "B": 0.04, "C": 0.03, "D": 0.005})
    want = {"A": (0.03, True), "B": (0.06, False), "C": (0.06, False), "D": (0.02, True)}
    assert got.keys() == want.keys()
    for key, (p, reject) in want.items():
        assert got[key][0] == pytest.approx(p) and got[key][1] is reject
    # capped at 1; a nan is not counted in m (m = 2 here, not 3) and never rejected
    got = holm({"x": 0.6, "y": 0.7, "z": float("nan")})
    assert got["x"] == (1.0, False) and got["y"] == (1.0, False)
    assert math.isnan(got["z"][0]) and got["z"][1] is False
    got = holm({"x": 0.02, "n": float("nan"), "y": 0.024})
    assert got["x"] == (pytest.approx(0.04), True) and got["y"] == (pytest.approx(0.04), True)
    assert holm({"x": 0.02, "y": 0.024, "z": 0.9})["x"] == (pytest.approx(0.06), False)
    assert holm({}, 0.05) == {}


def test_holm_is_the_step_down_procedure() -> None:
    """Rejections equal Holm's step-down, written here as its definition: walk the sorted p's,
    reject while p_(i) <= alpha / (m - i + 1), stop at the first that is not."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        ps = {i: float(p) for i, p in enumerate(rng.uniform(0, 0.08, rng.integers(1, 9)))}
        rejected = set()
        for i, (k, p) in enumerate(sorted(ps.items(), key=lambda kv: kv[1])):
            if p > 0.05 / (len(ps) - i):
                break
            rejected.add(k)
        assert {k for k, (_, r) in holm(ps).items() if r} == rejected
    assert holm_levels({"a": 0.2, "b": 0.01, "c": float("nan"), "d": 0.03}) == {
        "b": pytest.approx(0.05 / 3), "d": pytest.approx(0.05 / 2), "a": pytest.approx(0.05),
        "c": pytest.approx(float("nan"), nan_ok=True),
    }  # fmt: skip
    # a tie is decided at the first of its ranks: both get alpha / 3
    assert holm_levels({"a": 0.01, "b": 0.01 * (1 + 1e-12), "c": 0.5}) == {
        "a": pytest.approx(0.05 / 3), "b": pytest.approx(0.05 / 3), "c": pytest.approx(0.05),
    }  # fmt: skip


def _unit(n: int, seed: int = 0) -> np.ndarray:
    """n values with sample mean 0 and sample standard deviation exactly 1."""
    x = np.random.default_rng(seed).standard_normal(n)
    return (x - x.mean()) / x.std(ddof=1)


def test_detectable_difference_against_cohens_tables() -> None:
    """Cohen (1988), Table 2.4.1, two-sided alpha .05, power .80: d = .5 needs n = 64 per
    group, d = .8 needs 26. With unit spreads the detectable difference is Cohen's d, so
    n = 64 detects .5 and n = 63 does not; n = 26 detects .8 and 25 does not."""
    for n, d in ((64, 0.5), (26, 0.8)):
        assert detectable_difference(_unit(n), _unit(n, 1), 0.05) <= d
        assert detectable_difference(_unit(n - 1), _unit(n - 1, 1), 0.05) > d


def test_detectable_difference_at_large_n_is_the_normal_formula() -> None:
    a, b = _unit(2000), 2 * _unit(3000, 1)
    se = math.sqrt(1 / 2000 + 4 / 3000)
    for alpha, power in ((0.05, 0.8), (0.01, 0.9)):
        want = se * (stats.norm.isf(alpha / 2) + stats.norm.isf(1 - power))
        assert detectable_difference(a, b, alpha, power) == pytest.approx(want, rel=2e-3)


def test_detectable_difference_has_its_power_in_a_simulation() -> None:
    """At n = 5/5 with equal sample spreads Welch's statistic is Student's and its df
    Student's 8, so the detectable difference is Student's: simulate normal seeds at it and
    count how often the test (at the same alpha) rejects."""
    a = np.array([0.30, 0.32, 0.34, 0.31, 0.33])
    b = a - 0.01
    alpha = 0.0125
    d = detectable_difference(a, b, alpha)
    sigma = float(np.std(a, ddof=1))
    rng = np.random.default_rng(7)
    x = rng.normal(d, sigma, (20_000, 5))
    y = rng.normal(0.0, sigma, (20_000, 5))
    # Student's t (df fixed at 8) is what the noncentral t describes exactly: 0.80 +- 0.006
    student = stats.ttest_ind(x, y, axis=1, equal_var=True).pvalue
    assert 0.785 <= float((student <= alpha).mean()) <= 0.815
    # Welch's own df is estimated draw by draw, which costs it some power at n = 5: the
    # approximation the docstring states (sample spread taken as the true one) is optimistic
    welch_p = stats.ttest_ind(x, y, axis=1, equal_var=False).pvalue
    assert 0.70 <= float((welch_p <= alpha).mean()) < 0.785
    assert math.isnan(detectable_difference([0.3], b, alpha))
    assert math.isnan(detectable_difference(a, b, float("nan")))


def test_verdict_text() -> None:
    assert verdict(A, B, 0.03, 0.05, 0.04) == (
        "holds (Δ +0.110, Welch p = 0.0037, Holm p = 0.03, n = 3/3)"
    )
    assert verdict(B, A, 0.03, 0.05, 0.04) == (
        "reversed (Δ -0.110, Welch p = 0.0037, Holm p = 0.03, n = 3/3)"
    )
    text = verdict(A, B, 0.06, 0.05, 0.0412)
    assert text == (
        "not distinguishable at n = 3/3 (Δ +0.110, Welch p = 0.0037, Holm p = 0.06; "
        "detectable ≥ 0.041)"
    )
    assert verdict([0.3], B, float("nan"), 0.05, float("nan")) == (
        "untested at n = 1/3: fewer than 2 values in an arm (Δ +0.090)"
    )
    assert verdict([1e-4, 2e-4, 3e-4], [0.2, 0.21, 0.22], 1e-5, 0.05, 0.0, digits=2).startswith(
        "reversed (Δ -0.21, Welch p < 0.001, Holm p < 0.001"
    )


def test_a_family_is_judged_together() -> None:
    """Alone, both the strong (p = .0037) and the weak (p = .035) comparison would hold at
    .05; Holm over the family of three tested ones (the untested one not counted) keeps only
    the strong one: .0037 x 3 = .011, then max(.011, .035 x 2) = .070 > .05."""
    weak = ([0.30, 0.33, 0.36], [0.24, 0.26, 0.28])
    null = ([0.30, 0.31, 0.32], [0.32, 0.30, 0.31])
    p_strong, p_weak = welch(A, B).p, welch(*weak).p
    assert 0.003 < p_strong < 0.004 and 0.03 < p_weak < 0.04 and welch(*null).p == 1.0
    pairs = {("strong", "mAP"): (A, B), ("weak", "mAP"): weak, ("weak", "car AP"): null,
             ("one seed", "car AP"): ([0.3], B)}  # fmt: skip
    judged = judge(pairs)
    assert [j.outcome for j in judged.values()] == [
        "holds", "not distinguishable", "not distinguishable", "untested"
    ]  # fmt: skip
    assert judged[("strong", "mAP")].p_holm == pytest.approx(3 * p_strong)
    assert judged[("weak", "mAP")].p_holm == pytest.approx(2 * p_weak)
    assert judged[("weak", "car AP")].p_holm == pytest.approx(1.0)
    assert judged[("strong", "mAP")].level == pytest.approx(0.05 / 3)
    # the detectable size is stated at alpha/m for every comparison of the family
    assert judged[("weak", "mAP")].level == pytest.approx(0.05 / 3)
    weak_d = judged[("weak", "mAP")].detectable
    assert weak_d == pytest.approx(detectable_difference(*weak, 0.05 / 3)) and weak_d > 0.07
    lines, again = verdict_table(pairs, ["mAP", "car AP"])
    assert {k: j.text for k, j in again.items()} == {k: j.text for k, j in judged.items()}
    assert lines[:2] == ["| claim | mAP | car AP |", "|---|---|---|"]
    assert lines[2].startswith("| strong | holds (Δ +0.110") and lines[2].endswith("| - |")
    assert lines[3].startswith("| weak | not distinguishable at n = 3/3 (Δ +0.070")
    assert lines[4].startswith("| one seed | - | untested at n = 1/3")
    assert "Holm over the 3 comparisons of this table, α = 0.05 (1 untested" in lines[-1]
    assert "within noise" not in "\n".join(lines) and "the same" not in "\n".join(lines)
    assert family_line({}, 0.05).startswith("Welch's t-test (two-sided) per comparison")
