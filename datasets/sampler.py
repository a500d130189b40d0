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
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from bevkd.pipeline.errors import BevkdError


class EpochBatches(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Micro-batches of ``(epoch, index)`` keys over ``n`` frames for one rank."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, grad_accum: int = 1) -> None:  # fmt: skip
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.epoch = 0
        per_step = batch_size * world_size * grad_accum
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
        """This epoch's frame order (every rank computes the same one)."""
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, b = self.order(), self.batch_size
        for step in range(self.steps):
            for micro in range(self.grad_accum):
                m = (step * self.grad_accum + micro) * self.world_size + self.rank
                yield [(self.epoch, int(i)) for i in order[m * b : (m + 1) * b]]
