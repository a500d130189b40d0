"""The torch side of the teacher store: cached targets beside dataset samples, and a prefetcher.

:class:`CachedTargets` wraps any map-style dataset of :class:`bevkd.datasets.frame.Sample`
and yields ``(sample, targets)``: the store fields of the sample's token, transformed by
its ``bev_aug`` field by field (:mod:`bevkd.storage.augment`). Keys pass through to the base
dataset unchanged (an index, or ``(epoch, index)``). The store is opened lazily in the
process that reads (each DataLoader worker opens its own; the parent never reads).
For remote stores use :func:`loader_kwargs`, which picks a ``forkserver`` worker context
(s3fs clients must not cross a fork). :mod:`bevkd.storage` itself stays numpy + zarr.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from bevkd.datasets import fov
from bevkd.datasets.frame import map_tensors
from bevkd.datasets.student_batch import StudentBatch, collate_student
from bevkd.storage.augment import transform_field
from bevkd.storage.reader import TeacherStore
from bevkd.storage.remote import is_local
from bevkd.storage.retry import RetryPolicy, default_policy
from bevkd.storage.schema import StoreContract, field_grid


class _LazyStore:
    """Opens the store on first use in each process (keyed by pid, so a fork re-opens), under
    the retry policy of the process that made it (a forkserver worker starts without it)."""

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None,
        expect: StoreContract | None,
        retry: RetryPolicy | None = None,
    ):
        self.url, self.storage_options, self.expect = str(url), storage_options, expect
        self.retry = retry or default_policy()
        self._store: TeacherStore | None = None
        self._pid = -1

    def get(self) -> TeacherStore:
        if self._store is None or self._pid != os.getpid():
            self._store = TeacherStore(
                self.url, self.storage_options, self.expect, retry=self.retry
            )
            self._pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options, "expect": self.expect,
                "retry": self.retry}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"], state["expect"], state.get("retry"))  # type: ignore[misc]


class CachedTargets(torch.utils.data.Dataset):
    """``(sample, targets)`` with ``targets[name]`` a float32 tensor: spatial ``(C, H, W)``,
    boxes ``(N, 11)``. ``labeled_only`` fields (which encode GT) are absent for samples without
    labels: by the *sample's* ``has_label``, so a run that hides a frame's GT hides them too."""

    def __init__(self, base: Any, url: str, fields: Iterable[str] | None = None,
                 expect: StoreContract | None = None, storage_options: dict[str, Any] | None = None,
                 fov_only: bool = False):  # fmt: skip
        self.base = base
        self.fields = tuple(fields) if fields is not None else None
        self.fov_only = fov_only  # mask the targets to the sample's cameras (data.fov_only)
        self._store = _LazyStore(url, storage_options, expect)

    def __len__(self) -> int:
        return len(self.base)

    def collate(self, items: list[tuple[Any, dict[str, torch.Tensor]]]) -> StudentBatch:
        """:func:`collate_student` with every field this dataset reads present in the batch,
        even where no item holds it (``present`` then all False)."""
        contract = self._store.get().contract
        names = self.fields if self.fields is not None else contract.field_names
        return collate_student(items, {name: contract.field(name).shape for name in names})

    def __getitem__(self, key: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        sample = self.base[key]
        store = self._store.get()
        fields = self.fields if self.fields is not None else store.contract.field_names
        if not sample.has_label:
            fields = tuple(f for f in fields if not store.contract.field(f).labeled_only)
        raw = store.read_frame(sample.token, fields)
        aug = sample.bev_aug.detach().cpu().numpy().astype(np.float64)
        targets = {}
        for name, value in raw.items():
            spec = store.contract.field(name)
            grid = (
                field_grid(store.contract.grid, spec)
                if spec.kind != "boxes"
                else store.contract.grid
            )
            moved = transform_field(
                value, spec.kind, aug, grid, spec.channel_map, spec.heatmap_activation or "logits"
            )
            targets[name] = moved
        if self.fov_only:  # what the sample's cameras see (its augmented cam2ego)
            view = fov.TargetView.of(store.contract, targets)
            widths = [sample.images.shape[-1]] * len(sample.cam2img)
            targets = view.mask(targets, sample.cam2img.numpy(), sample.cam2ego.numpy(), widths)
        return sample, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in targets.items()}


class StoreFrames(torch.utils.data.Dataset):
    """Frames of a store by index, as ``dict[str, Tensor]`` (no dataset, no augmentation)."""

    def __init__(self, url: str, fields: Iterable[str] | None = None, storage_options: dict[str, Any] | None = None,
                 indices: Iterable[int] | None = None, expect: StoreContract | None = None):  # fmt: skip
        self._store = _LazyStore(url, storage_options, expect)
        self.fields = tuple(fields) if fields is not None else None
        self.indices = list(indices) if indices is not None else None

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self._store.get())

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        frame = self.indices[index] if self.indices is not None else index
        raw = self._store.get().read_frame(frame, self.fields)
        return {k: torch.from_numpy(v) for k, v in raw.items()}


def worker_context(url: str) -> dict[str, Any]:
    """The DataLoader worker start method reading ``url`` needs: ``forkserver`` for remote
    stores (s3fs clients must not cross a fork), the default otherwise."""
    return {} if is_local(url) else {"multiprocessing_context": "forkserver"}


def loader_kwargs(url: str, num_workers: int) -> dict[str, Any]:
    """DataLoader keywords for reading ``url`` with ``num_workers`` processes."""
    if num_workers == 0:
        return {"num_workers": 0}
    return {"num_workers": num_workers, "persistent_workers": True, **worker_context(url)}


class Prefetcher:
    """Iterate ``source`` in a background thread, ``depth`` items ahead (optionally moving
    tensors to ``device``), so the consumer does not wait on store reads. Store decoding
    (zstd, numpy) releases the GIL, so this overlaps with the training step."""

    _END = object()

    def __init__(
        self, source: Iterable[Any], depth: int = 2, device: torch.device | str | None = None
    ):
        self.source, self.depth, self.device = source, depth, device

    def __iter__(self) -> Iterator[Any]:
        items: queue.Queue[Any] = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def work() -> None:
            try:
                for item in self.source:
                    if stop.is_set():
                        return
                    if self.device is not None:
                        item = map_tensors(item, lambda t: t.to(self.device, non_blocking=True))
                    items.put(item)
                items.put(self._END)
            except BaseException as exc:  # handed to the consumer, re-raised there
                items.put(exc)

        thread = threading.Thread(target=work, name="bevkd-prefetch", daemon=True)
        thread.start()
        try:
            while (item := items.get()) is not self._END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    items.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)


class SamplesOnly(torch.utils.data.Dataset):
    """``(sample, {})``: the items of :class:`CachedTargets` for a recipe that reads no store
    field (the GT-only baseline), so both collate the same way."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        return self.base[key], {}

    def collate(self, items: list[tuple[Any, dict[str, torch.Tensor]]]) -> StudentBatch:
        return collate_student(items)
