"""torch adapters: cached teacher targets beside dataset samples, and a prefetcher.

:class:`CachedTargets` wraps any map-style dataset of :class:`bevkd.datasets.frame.Sample`
and yields ``(sample, targets)``: the store fields of the sample's token, transformed by
its ``bev_aug`` field by field (:mod:`bevkd.storage.augment`). The store is opened lazily
in the process that reads (each DataLoader worker opens its own; the parent never reads).
For remote stores use :func:`loader_kwargs`, which picks a ``forkserver`` worker context
(s3fs clients must not cross a fork).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bevkd.storage.augment import transform_field
from bevkd.storage.reader import TeacherStore
from bevkd.storage.remote import is_local
from bevkd.storage.schema import StoreContract, field_grid


class _LazyStore:
    """Opens the store on first use in each process (keyed by pid, so a fork re-opens)."""

    def __init__(
        self, url: str, storage_options: dict[str, Any] | None, expect: StoreContract | None
    ):
        self.url, self.storage_options, self.expect = str(url), storage_options, expect
        self._store: TeacherStore | None = None
        self._pid = -1

    def get(self) -> TeacherStore:
        if self._store is None or self._pid != os.getpid():
            self._store = TeacherStore(self.url, self.storage_options, self.expect)
            self._pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options, "expect": self.expect}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"], state["expect"])  # type: ignore[misc]


class CachedTargets(torch.utils.data.Dataset):
    """``(sample, targets)`` with ``targets[name]`` a float32 tensor: spatial ``(C, H, W)``,
    boxes ``(N, 11)``. ``labeled_only`` fields are absent for unlabeled frames."""

    def __init__(self, base: Any, url: str, fields: Iterable[str] | None = None,
                 expect: StoreContract | None = None, storage_options: dict[str, Any] | None = None):  # fmt: skip
        self.base = base
        self.fields = tuple(fields) if fields is not None else None
        self._store = _LazyStore(url, storage_options, expect)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, torch.Tensor]]:
        sample = self.base[index]
        store = self._store.get()
        raw = store.read_frame(sample.token, self.fields)
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
            targets[name] = torch.from_numpy(np.ascontiguousarray(moved))
        return sample, targets


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


@dataclass
class TargetBatch:
    """Collated targets. ``fields[name]``: (B, C, H, W), zeros where ``present[name]`` (B,) is
    False; ``boxes[name]``: B tensors (N_b, 11) (empty where absent)."""

    fields: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    boxes: dict[str, list[torch.Tensor]]

    def to(self, device: torch.device | str) -> TargetBatch:
        return TargetBatch(
            {k: v.to(device, non_blocking=True) for k, v in self.fields.items()},
            {k: v.to(device, non_blocking=True) for k, v in self.present.items()},
            {k: [b.to(device, non_blocking=True) for b in v] for k, v in self.boxes.items()},
        )


def collate_targets(targets: list[dict[str, torch.Tensor]]) -> TargetBatch:
    """Stack per-sample target dicts; a field absent in some samples is zero-filled and masked."""
    names = sorted({n for t in targets for n in t})
    fields, present, boxes = {}, {}, {}
    for name in names:
        have = torch.tensor([name in t for t in targets], dtype=torch.bool)
        example = next(t[name] for t in targets if name in t)
        if example.ndim == 2:  # boxes rows
            boxes[name] = [t.get(name, torch.zeros((0, example.shape[1]))) for t in targets]
            continue
        fields[name] = torch.stack(
            [t[name] if name in t else torch.zeros_like(example) for t in targets]
        )
        present[name] = have
    return TargetBatch(fields, present, boxes)


def collate_cached(items: list[tuple[Any, dict[str, torch.Tensor]]]) -> tuple[Any, TargetBatch]:
    """DataLoader ``collate_fn`` for :class:`CachedTargets`: (datasets Batch, TargetBatch)."""
    from bevkd.datasets.frame import collate

    return collate([s for s, _ in items]), collate_targets([t for _, t in items])


def loader_kwargs(url: str, num_workers: int) -> dict[str, Any]:
    """DataLoader keywords for reading ``url`` with ``num_workers`` processes."""
    if num_workers == 0:
        return {"num_workers": 0}
    kwargs: dict[str, Any] = {"num_workers": num_workers, "persistent_workers": True}
    if not is_local(url):
        kwargs["multiprocessing_context"] = "forkserver"
    return kwargs


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
                    items.put(_to_device(item, self.device) if self.device is not None else item)
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


def _to_device(item: Any, device: torch.device | str) -> Any:
    if isinstance(item, torch.Tensor):
        return item.to(device, non_blocking=True)
    if hasattr(item, "to") and callable(item.to):
        return item.to(device)
    if isinstance(item, dict):
        return {k: _to_device(v, device) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return type(item)(_to_device(v, device) for v in item)
    return item
