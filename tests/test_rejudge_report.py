"""benchmarks/rejudge.py: the old blocks' numbers read back, and judged by Welch + Holm."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from stage_helpers import benchmark_module

OLD = """<!-- recipes:start -->
| arm | seeds | mAP | NDS | car AP | Δ mAP | Δ car AP | car AP per seed |
|---|---|---|---|---|---|---|---|
| baseline | 3 | 0.016 ± 0.002 | 0.033 ± 0.001 | 0.164 ± 0.018 |  |  | 0.179, 0.145, 0.169 |
| cmkd | 3 | 0.019 ± 0.001 | 0.035 ± 0.002 | 0.193 ± 0.007 | +0.003 | +0.028 | 0.193, 0.186, 0.200 |
<!-- recipes:end -->
<!-- codecs:start -->
`cmkd` (144 steps, seeds 0, 1, 2) on stores
| store | codecs | KB | x | y | err | mAP | car AP | a | b |
|---|---|---|---|---|---|---|---|---|---|
| fp32 | f | 646.1 | 2.1x | 1.0x | 0 | 0.016 ± 0.001 | 0.161 ± 0.008 |  |  |
| uint8 | u | 173.5 | 7.8x | 3.7x | 0.005 | 0.019 ± 0.001 | 0.193 ± 0.007 | x | y |
<!-- codecs:end -->
"""


@pytest.fixture(scope="module")
def rejudge() -> Iterator[Any]:
    yield from benchmark_module("rejudge")


def test_the_old_numbers_are_read_back(rejudge: Any) -> None:
    assert rejudge.recipe_seeds(OLD) == {
        "baseline": [0.179, 0.145, 0.169], "cmkd": [0.193, 0.186, 0.200],
    }  # fmt: skip
    assert rejudge.codec_stats(OLD) == {"fp32": (0.161, 0.008, 3), "uint8": (0.193, 0.007, 3)}


def test_the_old_claims_are_judged_by_welch(rejudge: Any) -> None:
    text = rejudge.report(OLD, "abc1234")
    # cmkd vs baseline by hand: means 0.19300 and 0.16433, variances 4.9e-5 and 3.0533e-4,
    # se = sqrt((4.9e-5 + 3.0533e-4) / 3) = 0.010868, t = 2.638, Welch df = 2.57: p ≈ 0.089.
    assert "| cmkd beats the baseline | not distinguishable at n = 3/3 (Δ +0.029" in text
    assert "Welch p = 0.089" in text and "Holm over the 1 comparisons" in text
    # uint8 vs fp32 from mean ± std: t = 0.032 / sqrt((0.007² + 0.008²)/3) = 5.21, df 3.93
    assert "| uint8 | +0.032 | 0.00677 | 0.00677 | 3/3 | holds |" in text
    assert "two standard errors" in text and "within noise" not in text
