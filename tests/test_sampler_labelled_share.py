"""A fixed labelled share of every batch (``student.labelled_per_batch``): each micro-batch
holds exactly k labelled frames, every unlabelled frame is read once per epoch, the layout
across ranks and accumulation is the plain sampler's, and bad settings are refused."""

from __future__ import annotations

import numpy as np
import pytest

from bevkd.datasets.sampler import EpochBatches
from bevkd.pipeline.errors import BevkdError

# 18 labelled frames among 144 (the few-labels setting), scattered
LABELLED = np.zeros(144, dtype=bool)
LABELLED[np.random.default_rng(0).choice(144, 18, replace=False)] = True


def batches(epoch: int = 0, **kwargs: object) -> list[list[int]]:
    sampler = EpochBatches(144, 4, seed=5, labelled=LABELLED, labelled_per_batch=2, **kwargs)  # type: ignore[arg-type]
    sampler.set_epoch(epoch)
    return [[i for _, i in batch] for batch in sampler]


def test_every_batch_holds_k_labelled_and_every_unlabelled_frame_once() -> None:
    got = batches()
    assert len(got) == 126 // 2  # the unlabelled frames set the epoch: 2 per batch
    for batch in got:
        assert len(batch) == 4 and LABELLED[batch].sum() == 2
    unlabelled = [i for b in got for i in b if not LABELLED[i]]
    assert sorted(unlabelled) == sorted(np.flatnonzero(~LABELLED).tolist())
    labelled = [i for b in got for i in b if LABELLED[i]]
    counts = np.bincount(labelled, minlength=144)[LABELLED]
    assert counts.min() >= 126 // 18 - 1 and counts.max() <= 126 // 18 + 1  # drawn evenly


def test_epochs_differ_and_a_seed_reproduces_them() -> None:
    assert batches(0) == batches(0)
    assert batches(0) != batches(1)


def test_ranks_and_accumulation_read_the_same_frames_per_step() -> None:
    one = batches(grad_accum=2)
    ranks = [batches(rank=r, world_size=2) for r in range(2)]
    assert len(one) == 2 * len(ranks[0])
    for step in range(len(ranks[0])):
        assert one[2 * step] == ranks[0][step] and one[2 * step + 1] == ranks[1][step]


def test_without_a_share_the_sampler_is_unchanged() -> None:
    plain = EpochBatches(144, 4, seed=5)
    shared = EpochBatches(144, 4, seed=5, labelled=LABELLED, labelled_per_batch=0)
    assert list(plain) == list(shared)


@pytest.mark.parametrize(
    ("labelled", "k", "message"),
    [
        (LABELLED, 4, r"labelled_per_batch must be in 1\.\.3"),
        (np.zeros(144, dtype=bool), 2, "18|0 labelled"),
        (np.ones(144, dtype=bool), 2, "it needs both"),
        (None, 2, "needs a labelled flag"),
    ],
)
def test_bad_shares_are_refused(labelled: np.ndarray | None, k: int, message: str) -> None:
    with pytest.raises(BevkdError, match=message):
        EpochBatches(144, 4, labelled=labelled, labelled_per_batch=k)
