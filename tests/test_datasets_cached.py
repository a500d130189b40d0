"""The torch adapter: cached targets beside samples, per-worker store handles, prefetching."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bevkd.datasets.cached import CachedTargets, Prefetcher, StoreFrames, loader_kwargs
from bevkd.datasets.frame import Sample
from bevkd.datasets.student_batch import collate_student
from bevkd.pipeline.geometry import bev_transform
from bevkd.storage.augment import transform_field
from bevkd.storage.reader import open_store
from bevkd.storage.testing import small_contract, write_store

AUGS = [
    bev_transform(),
    bev_transform(flip_y=True),
    bev_transform(rotation=np.pi / 2),
    bev_transform(rotation=0.3, scale=1.05),
]


class Samples(torch.utils.data.Dataset):
    """A map-style dataset of real :class:`Sample` records (tiny tensors; one BEV aug each)."""

    def __init__(self, tokens: list[str], has_label: list[bool]):
        self.tokens, self.has_label = tokens, has_label

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> Sample:
        img_aug = torch.eye(4).repeat(1, 1, 1)
        img_aug[0, 0, 0] = 0.5  # an image-space resize: not in bev_aug, so fields don't care
        return Sample(
            token=self.tokens[i], index=i, has_label=self.has_label[i], images=torch.zeros(1, 3, 4, 4),
            cam2img=torch.eye(4)[None], cam2ego=torch.eye(4)[None], img_aug=img_aug,
            bev_aug=torch.from_numpy(AUGS[i % len(AUGS)]).float(), points=torch.zeros(0, 5),
            gt_boxes=torch.zeros(0, 9), gt_labels=torch.zeros(0, dtype=torch.int64), depth=torch.zeros(1, 2, 2),
        )  # fmt: skip


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("ds") / "s.zarr")
    write_store(url, small_contract(), n_frames=8, shard_size=4)
    return url


def _samples(store_url: str, order: list[int]) -> Samples:
    store = open_store(store_url)
    return Samples([store.tokens[i] for i in order], [bool(store.has_label[i]) for i in order])


def test_targets_are_the_fields_of_the_same_token_moved_by_bev_aug(store_url: str) -> None:
    order = [5, 0, 3, 6, 1]  # dataset order differs from store order: matched by token
    dataset = CachedTargets(_samples(store_url, order), store_url)
    store = open_store(store_url)
    for k, frame in enumerate(order):
        sample, targets = dataset[k]
        raw = store.read_frame(frame)
        assert set(targets) == set(raw)
        assert ("label_bev" in targets) == bool(store.has_label[frame])  # labeled-only: absent
        aug = sample.bev_aug.numpy().astype(np.float64)
        for name, value in raw.items():
            spec = store.contract.field(name)
            want = transform_field(
                value,
                spec.kind,
                aug,
                store.contract.grid,
                spec.channel_map,
                spec.heatmap_activation or "logits",
            )
            np.testing.assert_allclose(targets[name].numpy(), want, rtol=1e-6, atol=1e-6)
        if k % len(AUGS) == 0:  # identity bev_aug (image-space aug only): fields unchanged
            np.testing.assert_array_equal(targets["lidar_bev"].numpy(), raw["lidar_bev"])


def test_two_workers_open_their_own_handles_and_the_parent_never_reads(store_url: str) -> None:
    order = list(range(8))
    dataset = CachedTargets(_samples(store_url, order), store_url)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=3, collate_fn=collate_student, **loader_kwargs(store_url, 2)
    )
    seen = []
    for batch in Prefetcher(loader, depth=2):
        targets = batch.targets
        seen += batch.tokens
        assert targets.fields["lidar_bev"].shape[1:] == (8, 16, 16)
        np.testing.assert_array_equal(targets.present["label_bev"].numpy(), batch.has_label.numpy())
        assert targets.fields["label_bev"][~batch.has_label].abs().sum() == 0
        assert len(targets.boxes["boxes"]) == batch.size
    assert seen == [open_store(store_url).tokens[i] for i in order]
    assert dataset._store._store is None  # opened only inside the workers


def test_adapters_pickle_without_store_handles(store_url: str) -> None:
    frames = StoreFrames(store_url, fields=["heatmap"])
    assert len(frames) == 8  # opens in this process
    clone = pickle.loads(pickle.dumps(frames))
    assert clone._store._store is None
    np.testing.assert_array_equal(clone[2]["heatmap"].numpy(), frames[2]["heatmap"].numpy())


def test_remote_urls_get_a_forkserver_worker_context() -> None:
    assert loader_kwargs("s3://bucket/x.zarr", 2)["multiprocessing_context"] == "forkserver"
    assert "multiprocessing_context" not in loader_kwargs("/data/x.zarr", 2)
    assert loader_kwargs("s3://bucket/x.zarr", 0) == {"num_workers": 0}


def test_prefetcher_keeps_order_and_reraises_errors() -> None:
    assert list(Prefetcher(range(20), depth=3)) == list(range(20))

    def broken():
        yield 1
        raise ValueError("frame 7: store chunk is corrupt")

    with pytest.raises(ValueError, match="frame 7"):
        list(Prefetcher(broken()))
    early = Prefetcher(range(1000), depth=2)
    for item in early:  # leaving early stops the producer thread
        if item == 3:
            break


def test_missing_store_fails_in_the_reader_with_a_clear_error(tmp_path: Path) -> None:
    from bevkd.storage.schema import StoreError

    dataset = CachedTargets(Samples(["t"], [True]), str(tmp_path / "none.zarr"))
    with pytest.raises(StoreError, match=r"none\.zarr: no such directory"):
        dataset[0]


def test_a_field_no_sample_holds_is_still_collated_as_absent() -> None:
    """A batch of unlabelled frames holds no ``label_bev``; with the fields a dataset reads
    (``expected``), the batch still has it: zeros, ``present`` all False; and boxes fields
    get empty rows and a ``present`` entry too."""
    from bevkd.datasets.student_batch import collate_targets

    items = [{"lidar_bev": torch.ones(2, 4, 4)}, {"lidar_bev": torch.ones(2, 4, 4)}]
    tg = collate_targets(items, {"lidar_bev": (2, 4, 4), "label_bev": (3, 4, 4), "boxes": (8, 11)})
    assert tg.field("label_bev").shape == (2, 3, 4, 4) and not tg.field("label_bev").any()
    assert tg.present["label_bev"].tolist() == [False, False]
    assert tg.present["lidar_bev"].tolist() == [True, True]
    assert [r.shape for r in tg.boxes["boxes"]] == [(0, 11), (0, 11)]
    assert tg.present["boxes"].tolist() == [False, False]
