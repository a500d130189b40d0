"""The label budget (datasets/budget.py), read alike by teachers and students: a teacher under a
budget never loads a hidden frame, its checkpoint and the store it caches record the labelled
frames it saw, and a student under a budget refuses a store whose teachers saw what it hides."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stage_helpers import cache_config, copy_dataset, small_config

from bevkd.datasets import budget
from bevkd.datasets.dataset import FrameDataset, load_frames
from bevkd.datasets.frame import Frame
from bevkd.models.builders import build_teacher
from bevkd.models.checkpoint import load_checkpoint, save_checkpoint
from bevkd.pipeline.config import ConfigError, DataConfig
from bevkd.pipeline.errors import BevkdError
from bevkd.stages import cache_teacher, train_student, train_teacher
from bevkd.storage.reader import open_store


def frame(token: str, has_label: bool = True) -> Frame:
    n = 2 if has_label else 0
    return Frame(
        token=token, scene="s", timestamp=0, split="train", has_label=has_label, lidar_path="",
        lidar2ego=np.eye(4), ego2global=np.eye(4), cameras=(),
        boxes=np.ones((n, 9), np.float32), labels=np.zeros(n, np.int64),
        num_lidar_pts=np.full(n, 5, np.int64),
    )  # fmt: skip


def _kept(frames: list[Frame], fraction: float, seed: int) -> list[str]:
    return list(budget.choose(DataConfig(labeled_fraction=fraction, label_seed=seed), frames).kept)


@pytest.mark.parametrize(("fraction", "count"), [(0.25, 10), (0.3, 12), (0.01, 1), (0.001, 1)])
def test_a_budget_keeps_a_fixed_seeded_fraction_whatever_the_order(
    fraction: float, count: int
) -> None:
    frames = [frame(f"t{i:02d}") for i in range(40)] + [frame(f"u{i}", False) for i in range(5)]
    chosen = budget.choose(DataConfig(labeled_fraction=fraction, label_seed=0), frames)
    kept = list(chosen.kept)
    assert len(kept) == count and kept == sorted(kept)
    assert set(chosen.hidden) == {f"t{i:02d}" for i in range(40)} - set(kept)
    out = budget.hide_labels(frames, chosen)
    assert [f.token for f in out] == [f.token for f in frames]  # same frames, same order
    assert {f.token for f in out if f.has_label} == set(kept)
    for before, after in zip(frames, out, strict=True):
        if after.token in kept or not before.has_label:
            assert after is before
        else:  # hidden: no label, no box, nothing derived from one
            assert not after.has_label and after.boxes.shape == (0, 9)
            assert after.labels.shape == after.num_lidar_pts.shape == (0,)
    shuffled = frames[:]
    random.Random(1).shuffle(shuffled)
    assert _kept(shuffled, fraction, 0) == kept
    if count > 1:
        assert _kept(frames, fraction, 1) != kept


def test_a_full_budget_hides_nothing() -> None:
    frames = [frame("b"), frame("a"), frame("u", False)]
    chosen = budget.choose(DataConfig(), frames)
    assert chosen.kept == ("a", "b") and not chosen.active
    assert all(a is b for a, b in zip(budget.hide_labels(frames, chosen), frames, strict=True))


def test_a_token_file_is_the_budget(tmp_path: Path) -> None:
    frames = [frame(t) for t in ("a", "b", "c", "d")]
    listed = tmp_path / "kept.txt"
    listed.write_text("# the kept frames\nc\n\na  # a comment\n")
    chosen = budget.choose(DataConfig(labeled_tokens=str(listed)), frames)
    assert chosen.kept == ("a", "c") and chosen.hidden == ("b", "d")
    listed.write_text("a\nzz\n")
    with pytest.raises(BevkdError, match=r"1 tokens are not labelled train frames .*zz"):
        budget.choose(DataConfig(labeled_tokens=str(listed)), frames)
    with pytest.raises(BevkdError, match="no such file"):
        budget.choose(DataConfig(labeled_tokens=str(tmp_path / "absent.txt")), frames)
    with pytest.raises(ConfigError, match="keep one"):
        DataConfig(labeled_tokens=str(listed), labeled_fraction=0.5)


def test_the_fraction_must_be_in_0_1() -> None:
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ConfigError, match="labeled_fraction"):
            DataConfig(labeled_fraction=bad)


def test_a_record_is_the_union_of_its_sources_or_unknown() -> None:
    assert budget.union_record(["b", "a"], [["c", "a"]]) == ["a", "b", "c"]
    assert budget.union_record(["a"], []) == ["a"]
    assert budget.union_record(["a"], [["b"], None]) is None


# ------------------------------------------------------------------------------------------
# Teachers under a budget, and the stores they make
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_dataset(tiny_nuscenes, tmp_path_factory.mktemp("budget") / "data")


def test_a_teacher_under_a_budget_never_loads_a_hidden_frame(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[str] = []
    original = FrameDataset.__getitem__

    def spy(self: FrameDataset, key: Any) -> Any:
        sample = original(self, key)
        loaded.append(sample.token)
        return sample

    monkeypatch.setattr(FrameDataset, "__getitem__", spy)
    cfg = small_config(
        root, "model.kind=lidar", "model.lidar_encoder=pillar", "train.epochs=2",
        f"train.out_dir={tmp_path}", "data.labeled_fraction=0.5", "data.label_seed=4",
        "train.num_workers=0",
    )  # fmt: skip
    train = load_frames(cfg, "train")
    chosen = budget.choose(cfg.data, train)
    assert len(chosen.kept) == 2 and len(chosen.hidden) == 1  # round(0.5 * 3)
    val = {f.token for f in load_frames(cfg, "val")}
    train_teacher.run(cfg)
    trained = [t for t in loaded if t not in val]
    assert set(trained) == set(chosen.kept)  # both epochs read the kept frames ...
    assert not set(loaded) & set(chosen.hidden)  # ... and nothing ever read a hidden one
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(tmp_path / name)["labeled_tokens"] == list(chosen.kept), name
    # A label encoder built on it, under no budget, has seen its frames and all of its own.
    label_cfg = small_config(
        root, "model.kind=label_encoder", f"model.checkpoint={tmp_path / 'best.pt'}"
    )
    _, seen = train_teacher.budget_dataset(label_cfg, say=lambda _: None)
    assert seen == sorted(f.token for f in train)


def _teachers(root: Path, out: Path, seen: list[str] | None) -> tuple[Path, Path]:
    """Seeded random LiDAR teacher and label encoder checkpoints recording ``seen`` (nothing
    when None), as train-teacher writes them."""
    out.mkdir(parents=True, exist_ok=True)
    record = {} if seen is None else {"labeled_tokens": seen}
    torch.manual_seed(0)
    lidar_cfg = small_config(root, "model.kind=lidar")
    lidar = save_checkpoint(out / "lidar.pt", build_teacher(lidar_cfg), lidar_cfg, **record)
    label_cfg = small_config(root, "model.kind=label_encoder", f"model.checkpoint={lidar}")
    label = save_checkpoint(out / "label.pt", build_teacher(label_cfg), label_cfg, **record)
    return lidar, label


@pytest.fixture(scope="module")
def stores(root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three stores of one tiny world: teachers that saw every label, teachers that saw only
    the kept ones (label_seed 4, half), and teachers that record nothing."""
    base = tmp_path_factory.mktemp("budget_stores")
    cfg = small_config(root, "data.labeled_fraction=0.5", "data.label_seed=4")
    train = load_frames(cfg, "train")
    chosen = budget.choose(cfg.data, train)
    out: dict[str, Any] = {"chosen": chosen}
    for name, seen in (("all", sorted(f.token for f in train)), ("kept", list(chosen.kept)),
                       ("unknown", None)):  # fmt: skip
        teachers = _teachers(root, base / name, seen)
        url = base / f"{name}.zarr"
        cache_teacher.run(cache_config(root, teachers, url))
        out[name] = str(url)
    return out


def _student(root: Path, url: str, *extra: str):
    return small_config(
        root, "model.kind=camera", "student.recipe=cmkd", f"student.store={url}",
        "student.bev_channels=16", "student.unlabeled=true", "data.labeled_fraction=0.5",
        "data.label_seed=4", *extra,
    )  # fmt: skip


def test_the_store_records_what_each_teacher_saw(stores: dict[str, Any]) -> None:
    chosen = stores["chosen"]
    made = open_store(stores["kept"]).provenance["teachers"]
    for name in ("lidar", "label_encoder"):
        assert made[name]["labeled_tokens"]["tokens"] == list(chosen.kept)
        assert made[name]["labeled_tokens"]["count"] == 2
    assert open_store(stores["all"]).provenance["teachers"]["lidar"]["labeled_tokens"]["count"] == 3
    assert open_store(stores["unknown"]).provenance["teachers"]["lidar"]["labeled_tokens"] is None


def test_a_student_refuses_teachers_that_saw_the_labels_it_hides(
    root: Path, stores: dict[str, Any]
) -> None:
    leaky = open_store(stores["all"])
    with pytest.raises(
        BevkdError, match=r"teacher lidar of store .* trained on the GT of 1 of the 1 frames"
    ):
        train_student.training_frames(_student(root, stores["all"]), leaky, lambda _: None)
    with pytest.raises(BevkdError, match=r"teacher lidar of store .* does not record"):
        train_student.training_frames(
            _student(root, stores["unknown"]), open_store(stores["unknown"]), lambda _: None
        )
    # Said explicitly, the run goes on, labelled an oracle-teacher run.
    said: list[str] = []
    cfg = _student(root, stores["all"], "student.teacher_saw_hidden_labels=true")
    frames = train_student.training_frames(cfg, leaky, said.append)
    assert len(frames) > 3 and any(
        line.startswith("[train-student] ORACLE TEACHER") for line in said
    )
    # Teachers under the same budget: accepted, and the oracle flag there is an error.
    honest = open_store(stores["kept"])
    said.clear()
    train_student.training_frames(_student(root, stores["kept"]), honest, said.append)
    assert not any("ORACLE" in line for line in said)
    with pytest.raises(ConfigError, match=r"nothing this run learns from saw a hidden label"):
        train_student.training_frames(
            _student(root, stores["kept"], "student.teacher_saw_hidden_labels=true"),
            honest, lambda _: None,
        )  # fmt: skip
    # A checkpoint the student starts from is teacher knowledge too.
    lidar_all = Path(stores["all"]).parent / "all" / "lidar.pt"
    with pytest.raises(BevkdError, match=r"student.init_from_teacher .* trained on the GT of 1"):
        train_student.training_frames(
            _student(root, stores["kept"], f"student.init_from_teacher={lidar_all}"), honest,
            lambda _: None,
        )  # fmt: skip
    lidar_kept = Path(stores["kept"]).parent / "kept" / "lidar.pt"
    train_student.training_frames(
        _student(root, stores["kept"], f"student.init_from={lidar_kept}"), honest, lambda _: None
    )
    # The oracle key without a budget hides nothing: an error, not a label.
    with pytest.raises(ConfigError, match="needs a label budget"):
        train_student.training_frames(
            small_config(root, "model.kind=camera", "student.recipe=cmkd",
                         f"student.store={stores['all']}", "student.teacher_saw_hidden_labels=true"),
            leaky, lambda _: None,
        )  # fmt: skip
    # No budget: nothing to compare.
    full = small_config(
        root, "model.kind=camera", "student.recipe=cmkd", f"student.store={stores['all']}"
    )
    train_student.training_frames(full, leaky, lambda _: None)


def test_a_student_refuses_an_unfinalized_store(root: Path, stores: dict[str, Any],
                                                tmp_path: Path) -> None:  # fmt: skip
    import shutil

    from bevkd.distill.recipes import build_recipe
    from bevkd.storage.writer import StoreWriter

    url = tmp_path / "copy.zarr"
    shutil.copytree(stores["kept"], url)
    cfg = small_config(root, "model.kind=camera", "student.recipe=cmkd", f"student.store={url}",
                       "student.bev_channels=16")  # fmt: skip
    train_student.open_for(cfg, build_recipe(cfg))  # finalized: opens
    StoreWriter.open(str(url)).unmark([1])  # as a crash in a repair leaves it
    with pytest.raises(BevkdError, match=r"is not finalized \(\d+ of \d+ shards written\)"):
        train_student.open_for(cfg, build_recipe(cfg))


def test_a_recorded_config_of_an_earlier_bevkd_moves_its_budget_keys() -> None:
    from bevkd.pipeline.config import load_config, recorded_config, to_dict

    old = to_dict(load_config(None, []))
    del old["data"]["labeled_fraction"], old["data"]["label_seed"]
    old["student"].update(labeled_fraction=0.25, label_seed=3)  # where they were recorded
    cfg = recorded_config(old)
    assert (cfg.data.labeled_fraction, cfg.data.label_seed) == (0.25, 3)
    assert "labeled_fraction" in old["student"]  # the record itself is left as it was
    with pytest.raises(
        ConfigError, match=r"'student.labeled_fraction' is now 'data.labeled_fraction'"
    ):
        load_config(None, ["student.labeled_fraction=0.5"])


def test_a_store_identity_is_its_teachers_weights_frames_and_codecs(
    root: Path, stores: dict[str, Any], tmp_path: Path
) -> None:
    import json

    from bevkd.stages.demo_students import arm_metrics
    from bevkd.stages.run_ledger import store_identity

    # "all" and "kept" hold the same seeded weights; what their teachers saw differs
    same = store_identity(stores["all"])
    kept = store_identity(stores["kept"])
    assert set(same["teachers"]) == {"lidar", "label_encoder"} and "lidar_bev" in same["codecs"]
    assert same["teachers"]["lidar"]["weights"] == kept["teachers"]["lidar"]["weights"]
    assert (
        same["teachers"]["lidar"]["labelled_frames"] != kept["teachers"]["lidar"]["labelled_frames"]
    )
    assert same != kept and same == store_identity(stores["all"])
    torch.manual_seed(7)  # other weights: another store
    other_cfg = small_config(root, "model.kind=lidar")
    other = save_checkpoint(tmp_path / "other.pt", build_teacher(other_cfg), other_cfg)
    label = save_checkpoint(
        tmp_path / "label.pt",
        build_teacher(small_config(root, "model.kind=label_encoder", f"model.checkpoint={other}")),
        small_config(root, "model.kind=label_encoder", f"model.checkpoint={other}"),
    )
    url = tmp_path / "other.zarr"
    cache_teacher.run(cache_config(root, (other, label), url))
    other_id = store_identity(str(url))
    assert other_id["teachers"]["lidar"]["weights"] != same["teachers"]["lidar"]["weights"]
    # A finished run that did not record its store: its config was written before the store
    # was finalized, so which store it read is unknown and it is nobody's result ...
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text(json.dumps({"mAP": 0.1, "class_ap": {"car": 0.2}}))
    (run / "run.json").write_text(
        json.dumps({"config_sha256": "x", "code": {"commit": "c", "dirty": False}})
    )
    (run / "config.yaml").write_text("written before\n")
    os.utime(run / "config.yaml", (1.0, 1.0))
    assert arm_metrics(run, stores["all"]) is None
    # ... and once written after the store was finalized, it can only have read that store.
    os.utime(run / "config.yaml", None)
    assert arm_metrics(run, stores["all"])["mAP"] == 0.1
    assert json.loads((run / "run.json").read_text())["store"] == same
    assert arm_metrics(run, stores["kept"]) is None  # teachers that saw other labels
    assert arm_metrics(run, str(url)) is None  # other teachers
    assert arm_metrics(run) is not None  # an arm that reads no teacher field
    assert arm_metrics(run, stores["all"], config_sha256="x") is not None
    assert arm_metrics(run, stores["all"], config_sha256="y") is None  # another config's result


def test_a_recorded_heatmap_threshold_goes_to_each_of_its_four_uses() -> None:
    from bevkd.pipeline.config import load_config, recorded_config, to_dict

    old = to_dict(load_config(None, []))
    for key in ("qfl_threshold", "bev_mask_threshold", "unlabelled_mask_threshold",
                "cmd_mask_threshold"):  # fmt: skip
        del old["distill"][key]
    old["distill"]["heatmap_threshold"] = 0.1
    d = recorded_config(old).distill
    assert (d.qfl_threshold, d.bev_mask_threshold, d.unlabelled_mask_threshold,
            d.cmd_mask_threshold) == (0.1, 0.1, 0.1, 0.1)  # fmt: skip
    with pytest.raises(ConfigError, match=r"'distill.qfl_threshold' and 'distill.bev_mask"):
        load_config(None, ["distill.heatmap_threshold=0.2"])
