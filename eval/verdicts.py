"""Verdicts that hold up: Welch's t-test per comparison of seeds, Holm's correction over the
family of comparisons a report makes, and the smallest difference the test could have found.

Every results report judges its directional claims ("cmkd beats the baseline") here, so a
claim *holds* only when the test says so after the correction, and a difference the seeds
cannot resolve is called what it is: "not distinguishable at n = 5/5", with the size of
difference that would have been caught. Never "within noise" or "the same".

numpy and scipy only (no torch): the reports import it without building a model.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy import optimize, stats

K = TypeVar("K", bound=Hashable)
ALPHA = 0.05
POWER = 0.8


@dataclass(frozen=True)
class Welch:
    """Welch's unequal-variance t-test of ``a`` against ``b`` (two-sided).

    ``diff`` is mean(a) - mean(b); ``se`` its standard error sqrt(var_a/n_a + var_b/n_b)
    (sample variances, ddof 1); ``df`` the Welch-Satterthwaite degrees of freedom. ``t``,
    ``df``, ``p`` and ``se`` are nan when there is no test (``untested`` says why: fewer than
    2 values in an arm, or no spread in either)."""

    diff: float
    t: float
    df: float
    p: float
    n_a: int
    n_b: int
    se: float
    untested: str = ""


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's t-test of ``a`` against ``b``; p from ``scipy.stats.ttest_ind(equal_var=False)``."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(x) or not len(y):
        raise ValueError(f"welch: an arm has no values (n = {len(x)}/{len(y)})")
    diff = float(x.mean() - y.mean())
    nan = float("nan")
    if len(x) < 2 or len(y) < 2:
        why = "fewer than 2 values in an arm"
        return Welch(diff, nan, nan, nan, len(x), len(y), nan, why)
    se = math.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))
    if se == 0.0:  # every seed gave the same value in both arms: no spread to test against
        return Welch(diff, nan, nan, nan, len(x), len(y), 0.0, "no spread in either arm")
    result = stats.ttest_ind(x, y, equal_var=False)
    return Welch(
        diff, float(result.statistic), float(result.df), float(result.pvalue), len(x), len(y), se
    )


def holm(pvalues: Mapping[K, float], alpha: float = ALPHA) -> dict[K, tuple[float, bool]]:
    """Holm-Bonferroni over the family ``pvalues``: key -> (adjusted p, rejected at ``alpha``).

    With the m finite p's sorted ascending, p_(i) adjusts to max over j <= i of
    min(1, (m - j + 1) p_(j)) (monotone, capped at 1); a hypothesis is rejected when its
    adjusted p is <= ``alpha``, the same as Holm's step-down. A nan p (an untested comparison)
    is never rejected and is not counted in m: it stays (nan, False)."""
    finite = sorted((p, i) for i, (k, p) in enumerate(pvalues.items()) if not math.isnan(p))
    keys = list(pvalues)
    m = len(finite)
    out: dict[K, tuple[float, bool]] = {k: (float("nan"), False) for k in keys}
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        out[keys[i]] = (running, running <= alpha)
    return out


def holm_levels(pvalues: Mapping[K, float], alpha: float = ALPHA) -> dict[K, float]:
    """The level Holm compares each raw p against: alpha / (m - rank + 1), rank 1 the smallest
    p; nan for a nan p. The level a comparison's own test runs at. Tied p's (equal to 1e-9,
    relative) share the first one's level: Holm's step-down decides a tie there."""
    finite = sorted((p, i) for i, (k, p) in enumerate(pvalues.items()) if not math.isnan(p))
    keys = list(pvalues)
    out = {k: float("nan") for k in keys}
    level, previous = float("nan"), float("nan")
    for rank, (p, i) in enumerate(finite):
        if not math.isclose(p, previous, rel_tol=1e-9):
            level, previous = alpha / (len(finite) - rank), p
        out[keys[i]] = level
    return out


def detectable_difference(
    a: Sequence[float], b: Sequence[float], alpha: float, power: float = POWER
) -> float:
    """The smallest true difference of means that Welch's two-sided test at level ``alpha``
    would detect with probability ``power``, at these n's and this spread.

    Power at a true difference d is P(|T| > t_crit) with T noncentral t (df, d / se), where se
    and df are Welch's from the samples, and t_crit the two-sided ``alpha`` point of t(df);
    solved for d with ``scipy.optimize.brentq``. The approximation: it treats the samples'
    variances as the true ones (se and df fixed), which is exact for Student's t with equal n
    and spreads and somewhat optimistic for Welch's, whose df is itself estimated (at n = 5/5,
    about 0.75 power where this says 0.80). At 3-5 seeds the spread is uncertain too, so read
    the result as a scale, not a sharp bound. nan when :func:`welch` has no test."""
    w = welch(a, b)
    if math.isnan(w.p) or math.isnan(alpha):
        return float("nan")
    if not 0.0 < alpha < power < 1.0:
        raise ValueError(f"detectable_difference: need 0 < alpha ({alpha}) < power ({power}) < 1")
    crit = float(stats.t.isf(alpha / 2, w.df))

    def short(d: float) -> float:  # power at true difference d, minus the power wanted
        shift = d / w.se
        wrong_side = float(stats.nct.cdf(-crit, w.df, shift))  # scipy: nan far in the tail
        return float(stats.nct.sf(crit, w.df, shift)) + np.nan_to_num(wrong_side) - power

    high = w.se * (crit + 4.0)
    while short(high) < 0:
        high *= 2
    return float(optimize.brentq(short, 0.0, high, xtol=1e-12 * max(w.se, 1e-300)))


def _p(name: str, p: float) -> str:
    return f"{name} p < 0.001" if p < 0.001 else f"{name} p = {p:.2g}"


def verdict(
    a: Sequence[float],
    b: Sequence[float],
    p_adjusted: float,
    alpha: float,
    detectable: float,
    digits: int = 3,
) -> str:
    """One comparison's verdict on mean(a) - mean(b), as text:

    - ``holds (Δ +0.028, Welch p = 0.004, Holm p = 0.03, n = 5/5)``: adjusted p <= alpha, a > b;
    - ``reversed (Δ -0.028, ...)``: the same with a < b;
    - ``not distinguishable at n = 5/5 (Δ +0.010, Welch p = 0.21, Holm p = 0.84; detectable
      ≥ 0.041)``: the test cannot tell; ``detectable`` (:func:`detectable_difference`) is how
      large a true difference it would have caught;
    - ``untested at n = 1/3: fewer than 2 values in an arm (Δ +0.010)``."""
    w = welch(a, b)
    n = f"n = {w.n_a}/{w.n_b}"
    delta = f"Δ {w.diff:+.{digits}f}"
    if math.isnan(w.p):
        return f"untested at {n}: {w.untested} ({delta})"
    tests = f"{_p('Welch', w.p)}, {_p('Holm', p_adjusted)}"
    if p_adjusted <= alpha:
        return f"{'holds' if w.diff > 0 else 'reversed'} ({delta}, {tests}, {n})"
    return f"not distinguishable at {n} ({delta}, {tests}; detectable ≥ {detectable:.{digits}f})"


@dataclass(frozen=True)
class Judged:
    """One comparison of a family, judged: its test, Holm's adjusted p and decision, the level
    Holm ran it at, the difference detectable at that level, and the verdict text."""

    welch: Welch
    p_holm: float
    reject: bool
    level: float
    detectable: float
    text: str

    @property
    def outcome(self) -> str:
        """``holds``, ``reversed``, ``not distinguishable`` or ``untested``."""
        if math.isnan(self.welch.p):
            return "untested"
        if self.reject:
            return "holds" if self.welch.diff > 0 else "reversed"
        return "not distinguishable"


def judge(
    pairs: Mapping[K, tuple[Sequence[float], Sequence[float]]],
    alpha: float = ALPHA,
    power: float = POWER,
    digits: int = 3,
) -> dict[K, Judged]:
    """Every comparison (a, b) of one family: Welch each, Holm over the family, and the
    detectable difference of each at alpha / (the family's size)."""
    tests = {k: welch(a, b) for k, (a, b) in pairs.items()}
    adjusted = holm({k: w.p for k, w in tests.items()}, alpha)
    # Holm tests a comparison at a level between alpha/m and alpha that depends on the other
    # p's; the detectable size is stated at alpha/m, the level every comparison must be able
    # to pass (a rank-dependent level would understate it for exactly the ones not rejected).
    family = sum(not math.isnan(w.p) for w in tests.values())
    level = alpha / max(family, 1)
    out: dict[K, Judged] = {}
    for k, (a, b) in pairs.items():
        p_holm, reject = adjusted[k]
        detectable = detectable_difference(a, b, level, power)
        text = verdict(a, b, p_holm, alpha, detectable, digits)
        out[k] = Judged(tests[k], p_holm, reject, level, detectable, text)
    return out


def family_line(judged: Mapping[K, Judged], alpha: float = ALPHA, power: float = POWER) -> str:
    """The sentence that states a table's family and its correction."""
    tested = sum(not math.isnan(j.welch.p) for j in judged.values())
    untested = len(judged) - tested
    return (
        f"Welch's t-test (two-sided) per comparison of the seeds; Holm over the {tested} "
        f"comparisons of this table, α = {alpha:g}"
        + (f" ({untested} untested, with fewer than 2 seeds in an arm, not counted)" if untested else "")
        + f". A direction *holds* (or is *reversed*) only when its Holm-adjusted p is <= {alpha:g}. "
        f"*Detectable*: the true difference the test would find with {power:.0%} power at "
        f"α/{max(tested, 1)}, the strictest level Holm tests at, taking the seeds' spread as "
        "the true one."
    )  # fmt: skip


def verdict_table(
    pairs: Mapping[tuple[str, str], tuple[Sequence[float], Sequence[float]]],
    columns: Sequence[str],
    first: str = "claim",
    alpha: float = ALPHA,
    power: float = POWER,
    digits: int = 3,
) -> tuple[list[str], dict[tuple[str, str], Judged]]:
    """A markdown table of one family of comparisons keyed (row, column), rows in the order
    given, one column per ``columns`` entry ("-" where a row has no such comparison), followed
    by the family's :func:`family_line`; and the judgements, for the report's findings."""
    judged = judge(pairs, alpha, power, digits)
    rows = list(dict.fromkeys(row for row, _ in pairs))
    lines = [f"| {first} | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = [judged[(row, c)].text if (row, c) in judged else "-" for c in columns]
        lines.append(f"| {row} | {' | '.join(cells)} |")
    return [*lines, "", family_line(judged, alpha, power)], judged


def summary(judged: Mapping[tuple[str, str], Judged]) -> list[str]:
    """What a front page may quote of a judged family keyed (claim, metric): the directions
    that hold or are reversed, each with its test, then one line naming the rest (not
    distinguishable or untested), so nothing that failed the test reads as a result."""
    lines = [
        f"- **{j.outcome.capitalize()}:** {claim} ({metric}): {j.text}"
        for (claim, metric), j in judged.items()
        if j.outcome in ("holds", "reversed")
    ]
    rest = [f"{claim} ({metric})" for (claim, metric), j in judged.items()
            if j.outcome not in ("holds", "reversed")]  # fmt: skip
    if rest:
        lines.append("- Not distinguishable, or untested, at these seeds: " + "; ".join(rest) + ".")
    return lines
