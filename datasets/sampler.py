"""Which frames each step reads: one shuffle per epoch, split into micro-batches per rank.

:class:`EpochBatches` is a DataLoader ``batch_sampler`` yielding lists of ``(epoch, index)``
keys. The epoch travels with every key, so augmentation is drawn per epoch even in persistent
workers (see :class:`bevkd.datasets.dataset.FrameDataset`).

Layout of one epoch: the permutation ``default_rng([seed, epoch]).permutation(n)`` is cut into
micro-batches of ``batch_size``; optimizer step ``s`` consumes micro-batches
``s*A*W ... (s+1)*A*W - 1`` (``A`` accumulation micro-steps, ``W`` ranks), rank ``r`` taking
micro-batch ``(s*A + a)*W + r`` at micro-step ``a``. So one process accumulating 2 micro-batches
and two DDP ranks accumulating 1 see the same frames in every optimizer step. The frames left
over after the last whole step are not read that epoch (a new shuffle next epoch).

With ``labelled`` (a bool per frame) and ``labelled_per_batch = k > 0``, every micro-batch holds
``k`` labelled and ``batch_size - k`` unlabelled frames (the semi-supervised batches of CMKD's
and LPCG's training: a few labelled frames would otherwise be a rare sight among many
unlabelled ones). The unlabelled frames are shuffled once per epoch and set its length; the
labelled ones are drawn from their own shuffles, one after another, as often as needed. The
step layout across ranks and accumulation is the same.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from bevkd.pipeline.errors import BevkdError


class EpochBatches(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Micro-batches of ``(epoch, index)`` keys over ``n`` frames for one rank."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, grad_accum: int = 1, labelled: np.ndarray | None = None,
                 labelled_per_batch: int = 0) -> None:  # fmt: skip
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.epoch = 0
        self.k = labelled_per_batch
        self.labelled_idx = self.unlabelled_idx = np.zeros(0, np.int64)
        micro_batches = world_size * grad_accum
        per_step = batch_size * micro_batches
        if self.k:
            if labelled is None or len(labelled) != n:
                raise BevkdError("labelled_per_batch needs a labelled flag for every frame")
            if not 0 < self.k < batch_size:
                raise BevkdError(
                    f"student.labelled_per_batch must be in 1..{batch_size - 1} (train.batch_size "
                    f"{batch_size}: some of every batch labelled, the rest not), got {self.k}"
                )
            flags = np.asarray(labelled, dtype=bool)
            self.labelled_idx = np.flatnonzero(flags)
            self.unlabelled_idx = np.flatnonzero(~flags)
            if (
                len(self.labelled_idx) == 0
                or len(self.unlabelled_idx) < (batch_size - self.k) * micro_batches
            ):
                raise BevkdError(
                    f"student.labelled_per_batch {self.k}: the training set has "
                    f"{len(self.labelled_idx)} labelled and {len(self.unlabelled_idx)} unlabelled "
                    "frames; it needs both (add student.unlabeled=true, or set it to 0)"
                )
            self.steps = len(self.unlabelled_idx) // ((batch_size - self.k) * micro_batches)
            return
        if n < per_step:
            raise BevkdError(
                f"the training set has {n} frames, fewer than one optimizer step reads "
                f"({batch_size} per batch x {world_size} ranks x {grad_accum} accumulation steps); "
                "lower train.batch_size or train.grad_accum, or add frames"
            )
        self.steps = n // per_step  # optimizer steps per epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps * self.grad_accum

    def order(self) -> np.ndarray:
        """This epoch's frame order (every rank computes the same one): micro-batch ``m`` is
        ``order[m * batch_size : (m + 1) * batch_size]``."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if not self.k:
            return rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        b, k = self.batch_size, self.k
        count = self.steps * self.world_size * self.grad_accum  # micro-batches this epoch
        unlabelled = rng.permutation(self.unlabelled_idx) if self.shuffle else self.unlabelled_idx
        rounds = -(-count * k // len(self.labelled_idx))
        labelled = np.concatenate(
            [rng.permutation(self.labelled_idx) if self.shuffle else self.labelled_idx
             for _ in range(rounds)]
        )  # fmt: skip
        micro = [
            np.concatenate(
                [labelled[m * k : (m + 1) * k], unlabelled[m * (b - k) : (m + 1) * (b - k)]]
            )
            for m in range(count)
        ]
        return np.concatenate(micro)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, b = self.order(), self.batch_size
        for step in range(self.steps):
            for micro in range(self.grad_accum):
                m = (step * self.grad_accum + micro) * self.world_size + self.rank
                yield [(self.epoch, int(i)) for i in order[m * b : (m + 1) * b]]
