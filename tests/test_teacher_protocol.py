"""Custom teachers (models/protocol.py, docs/teachers.md) on the tiny synthetic world.

The teacher is the example of docs/teachers.md, written to a file outside the package and named
by path in ``cache.teachers``. It is cached into a store that verifies, holds the declared
fields equal to a direct forward within the codec error, and records the factory, the sha256 of
the source file and of the weights; a CMKD student trains from it, cached and online. What a
teacher gives is checked field by field (each failure named with teacher, frame and field); a
rerun resumes, and changed source or weights are refused.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from stage_helpers import copy_dataset, small_config

from bevkd.datasets import budget
from bevkd.datasets.cached import CachedTargets
from bevkd.datasets.dataset import FrameDataset, load_frames
from bevkd.datasets.frame import collate
from bevkd.models.checkpoint import weights_sha256
from bevkd.models.outputs import HeadOutput, TeacherOutput
from bevkd.pipeline.config import ConfigError
from bevkd.pipeline.errors import BevkdError
from bevkd.pipeline.provenance import sha256_file
from bevkd.stages import cache_teacher, custom_teacher, online_teacher, train_student
from bevkd.stages.custom_teacher import CustomTeacherError
from bevkd.stages.teacher_checks import TeacherOutputError, check_declaration, check_output
from bevkd.storage.reader import open_store
from bevkd.storage.schema import StoreError
from bevkd.storage.verify import verify_store
from bevkd.storage.writer import StoreWriter

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "teachers.md"


def doc_teacher() -> str:
    """The first python block of docs/teachers.md: the example teacher file."""
    found = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert found, "docs/teachers.md has no python block"
    return found.group(1)


def write_teacher(folder: Path, extra: str = "") -> str:
    """The doc's teacher (plus ``extra`` code) as ``folder/occupancy_teacher.py``; its
    ``cache.teachers`` entry."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "occupancy_teacher.py"
    path.write_text(doc_teacher() + extra)
    return f"{path}:build"


def cache_cfg(root: Path, entry: str, url: Path, *extra: str) -> Any:
    return small_config(
        root, f"cache.teachers=[{entry}]", "cache.n_workers=0", "store.shard_size=2",
        f"store.url={url}", "cache.splits=[train, val, unlabeled]", *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("custom_teacher")
    root = copy_dataset(tiny_nuscenes, base / "data")
    entry = write_teacher(base / "outside")
    url = base / "store.zarr"
    cfg = cache_cfg(root, entry, url)
    result = cache_teacher.run(cfg)
    return {"base": base, "root": root, "entry": entry, "url": str(url), "cfg": cfg,
            "result": result}  # fmt: skip


def fresh_teacher(entry: str, cfg: Any) -> Any:
    """The entry's teacher built from a separate import of its file (another 'process')."""
    path, name = entry.rsplit(":", 1)
    spec = importlib.util.spec_from_file_location("fresh_occupancy_teacher", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)(cfg, torch.device("cpu"), "").eval()


# ------------------------------------------------------------------------------------------
# The doc's teacher, cached
# ------------------------------------------------------------------------------------------


def test_the_doc_teacher_is_under_30_lines_and_outside_the_package(world: dict) -> None:
    code = [line for line in doc_teacher().splitlines() if line.strip()]
    assert len(code) < 30, len(code)
    path = Path(world["entry"].rsplit(":", 1)[0])
    assert ROOT not in path.parents and "bevkd" not in path.parts


def test_the_store_verifies_and_holds_what_the_teacher_computes(world: dict) -> None:
    cfg, url = world["cfg"], world["url"]
    assert world["result"].frames == 9 and not world["result"].skipped
    assert verify_store(url).ok
    store = open_store(url)
    h, w = cfg.grid.bev_shape
    kinds = {f.name: (f.kind, f.shape) for f in store.contract.fields}
    assert kinds == {
        "lidar_bev": ("bev_feature", (16, h, w)),
        "heatmap": ("heatmap", (len(cfg.classes), h, w)),
        "box_regression": ("box_regression", (10, h, w)),
        "boxes": ("boxes", (cfg.head.max_detections, 11)),
    }
    teacher = fresh_teacher(world["entry"], cfg)
    frames = cache_teacher.select_frames(cfg)
    dataset = FrameDataset(frames, cfg.data, train=False)
    errors = store.attrs["codec_error"]
    with torch.no_grad():
        for i in (0, 5):
            out = teacher(collate([dataset[i]]))
            cached = store.read_frame(i)
            for name, value in (("lidar_bev", out.features["lidar_bev"]),
                                ("heatmap", torch.sigmoid(out.head.heatmap))):  # fmt: skip
                diff = float((torch.from_numpy(cached[name]) - value[0]).abs().max())
                assert diff <= errors[name]["max_abs"] * 1.001 + 1e-6, (i, name, diff)
            assert len(cached["boxes"]) == len(out.detections[0].boxes) > 0


def test_provenance_records_the_factory_source_and_weights(world: dict) -> None:
    store = open_store(world["url"])
    made = store.provenance["teachers"]
    assert list(made) == ["occupancy"]
    rec = made["occupancy"]
    path = world["entry"].rsplit(":", 1)[0]
    assert rec["factory"] == world["entry"] and rec["source"] == path
    assert rec["source_sha256"] == sha256_file(path)
    teacher = fresh_teacher(world["entry"], world["cfg"])  # same weights in a fresh build
    assert rec["weights_sha256"] == weights_sha256({"model": teacher.state_dict()})
    assert rec["labeled_tokens"] is None  # the doc's teacher does not say: "unknown"
    assert store.provenance["checkpoint_sha256"] == {"occupancy": rec["checkpoint_sha256"]}
    assert world["entry"] in store.provenance["teacher"]


def test_a_student_trains_from_it_cached_and_online(world: dict, tmp_path: Path) -> None:
    def student(out: str, *extra: str) -> Any:
        return small_config(
            world["root"], "model.kind=camera", "student.recipe=cmkd",
            f"student.store={world['url']}", "student.bev_channels=16", "train.epochs=1",
            f"train.out_dir={tmp_path / out}", *extra,
        )  # fmt: skip

    cached = train_student.run(student("cached"))
    online = train_student.run(student("online", "train.targets=online"))
    assert cached.steps == online.steps == 1
    for out in ("cached", "online"):
        assert (tmp_path / out / "last.pt").is_file()


def test_online_targets_equal_the_store_within_its_codec_error(world: dict) -> None:
    cfg = small_config(world["root"], "model.kind=camera", "student.recipe=cmkd",
                       f"student.store={world['url']}")  # fmt: skip
    store = open_store(world["url"])
    fields = list(store.contract.field_names)
    samples = FrameDataset(load_frames(cfg, "train"), cfg.data, train=False)
    cached = CachedTargets(samples, world["url"], fields=fields)
    online, views = online_teacher.prepare(cfg, store, fields, samples, torch.device("cpu"))
    assert set(online.fields) == set(views.readers) == {"occupancy"}
    keys = list(range(len(samples)))
    a = cached.collate([cached[k] for k in keys])
    b = views.collate([views[k] for k in keys])
    b.targets = online(b)
    for name, value in a.targets.fields.items():
        diff = float((b.targets.fields[name] - value).abs().max())
        assert diff <= store.attrs["codec_error"][name]["max_abs"] * 1.001 + 1e-6, (name, diff)
    for x, y in zip(a.targets.boxes["boxes"], b.targets.boxes["boxes"], strict=True):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)


def test_a_label_budget_refuses_a_teacher_that_does_not_say_what_it_saw(world: dict) -> None:
    cfg = small_config(world["root"], "data.labeled_fraction=0.5")
    chosen = budget.choose(cfg.data, load_frames(cfg, "train"))
    with pytest.raises(BevkdError, match=r"teacher occupancy .* does not record which labelled"):
        train_student.check_teacher_labels(cfg, open_store(world["url"]), chosen)


def test_declared_labeled_tokens_are_recorded(world: dict, tmp_path: Path) -> None:
    extra = (
        "\n\ndef build_labelled(cfg, device, checkpoint):\n"
        "    teacher = build(cfg, device, checkpoint)\n"
        "    import dataclasses\n"
        "    teacher.declaration = dataclasses.replace(teacher.declaration, labeled_tokens=['a', 'b'])\n"
        "    return teacher\n"
    )
    entry = write_teacher(tmp_path, extra).replace(":build", ":build_labelled")
    built = custom_teacher.build(world["cfg"], entry, torch.device("cpu"))
    record = custom_teacher.describe(built)["labeled_tokens"]
    assert record["count"] == 2 and record["tokens"] == ["a", "b"]


# ------------------------------------------------------------------------------------------
# Resume and identity
# ------------------------------------------------------------------------------------------


def test_a_rerun_resumes_and_other_source_or_weights_are_refused(world: dict, tmp_path: Path) -> None:  # fmt: skip
    entry = write_teacher(tmp_path / "teacher")
    source = Path(entry.rsplit(":", 1)[0])
    weights = tmp_path / "weights.pt"
    teacher = fresh_teacher(entry, world["cfg"])
    torch.save(teacher.state_dict(), weights)
    url = tmp_path / "store.zarr"
    cfg = cache_cfg(world["root"], entry, url, "cache.splits=[train]",
                    f"cache.teacher_checkpoints=[[{entry}, {weights}]]")  # fmt: skip
    assert cache_teacher.run(cfg).shards_written == 2
    assert open_store(str(url)).provenance["teachers"]["occupancy"]["checkpoint"] == str(weights)
    assert cache_teacher.run(cfg).shards_written == 0  # finished: left as it is
    StoreWriter.open(str(url)).unmark([1])
    assert cache_teacher.run(cfg).shards_written == 1  # the same factory resumes
    assert verify_store(str(url)).ok
    # other weights at the same path
    state = {k: v + 0.01 for k, v in teacher.state_dict().items()}
    torch.save(state, weights)
    with pytest.raises(StoreError, match=r"teacher occupancy .*: its weights \(state_dict sha256"):
        cache_teacher.run(cfg)
    torch.save(teacher.state_dict(), weights)
    # an edited source file
    source.write_text(source.read_text() + "\n# edited\n")
    with pytest.raises(StoreError, match=r"teacher occupancy .*: its source file .* has sha256"):
        cache_teacher.run(cfg)


# ------------------------------------------------------------------------------------------
# What a teacher gives is checked
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_out(world: dict) -> tuple[Any, Any, list[str]]:
    """The doc teacher, its output on two frames and their tokens."""
    cfg = world["cfg"]
    built = custom_teacher.build(cfg, world["entry"], torch.device("cpu"))
    dataset = FrameDataset(cache_teacher.select_frames(cfg)[:2], cfg.data, train=False)
    batch = collate([dataset[0], dataset[1]])
    with torch.no_grad():
        out = built.teacher(batch)
    check_output(built.label, built.declaration, out, batch.tokens, 300)  # a good output passes
    return built, out, batch.tokens


def _features(out: TeacherOutput, **changes: Any) -> TeacherOutput:
    features = {**out.features, **changes}
    return dataclasses.replace(out, features={k: v for k, v in features.items() if v is not None})


def _nan_in_second(out: TeacherOutput) -> TeacherOutput:
    bev = out.features["lidar_bev"].clone()
    bev[1, 3, 5, 7] = float("nan")
    return _features(out, lidar_bev=bev)


def _detections(out: TeacherOutput, index: int, **changes: Any) -> TeacherOutput:
    dets = list(out.detections)
    dets[index] = dataclasses.replace(dets[index], **changes)
    return dataclasses.replace(out, detections=dets)


# (how the output is spoiled, the field the error names, which frames it names, what it says)
BAD_OUTPUTS = {
    "missing": (lambda o: _features(o, lidar_bev=None), "lidar_bev", (0, 1), "declared but not in"),
    "undeclared": (lambda o: _features(o, extra=o.features["lidar_bev"]), "extra", (0, 1), "not declared"),
    "channels": (lambda o: _features(o, lidar_bev=o.features["lidar_bev"][:, :8]), "lidar_bev", (0, 1), r"shape \(2, 8, 64, 64\), declared \(2, 16, 64, 64\)"),
    "stride": (lambda o: _features(o, lidar_bev=o.features["lidar_bev"][..., ::2, ::2]), "lidar_bev", (0, 1), r"shape \(2, 16, 32, 32\)"),
    "dtype": (lambda o: _features(o, lidar_bev=o.features["lidar_bev"].long()), "lidar_bev", (0, 1), "dtype torch.int64"),
    "nan": (_nan_in_second, "lidar_bev", (1,), "1 non-finite values"),
    "heatmap classes": (lambda o: dataclasses.replace(o, head=HeadOutput(o.head.heatmap[:, :5], o.head.regression)), "heatmap", (0, 1), r"declared \(2, 10, 64, 64\)"),
    "regression channels": (lambda o: dataclasses.replace(o, head=HeadOutput(o.head.heatmap, o.head.regression[:, :9])), "box_regression", (0, 1), "shape"),
    "detections per frame": (lambda o: dataclasses.replace(o, detections=o.detections[:1]), "boxes", (0, 1), "1 detections for a batch of 2"),
    "float labels": (lambda o: _detections(o, 1, labels=o.detections[1].labels.float()), "boxes", (1,), "integer class ids"),
    "unknown class": (lambda o: _detections(o, 0, labels=o.detections[0].labels + 10), "boxes", (0,), "outside 0..9"),
    "inf box": (lambda o: _detections(o, 0, boxes=o.detections[0].boxes * float("inf")), "boxes", (0,), "non-finite"),
    "not an output": (lambda o: {"lidar_bev": o.features["lidar_bev"]}, "", (0, 1), "not a bevkd.models.outputs.TeacherOutput"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_each_bad_output_is_refused_naming_teacher_frame_and_field(case: str, batch_out: tuple) -> None:  # fmt: skip
    built, out, tokens = batch_out
    spoil, field, frames, says = BAD_OUTPUTS[case]
    with pytest.raises(TeacherOutputError, match=says) as caught:
        check_output(built.label, built.declaration, spoil(out), tokens, 300)
    message = str(caught.value)
    assert message.startswith(f"teacher occupancy ({built.entry})"), message
    assert f"field {field!r}" in message or not field, message
    for i, token in enumerate(tokens):
        assert (token in message) == (i in frames), (token, message)


def test_more_boxes_than_the_store_holds_are_refused(batch_out: tuple) -> None:
    built, out, tokens = batch_out
    n = len(out.detections[0].boxes)
    with pytest.raises(TeacherOutputError, match=f"field 'boxes': {n} boxes, more than the store's 1 rows"):  # fmt: skip
        check_output(built.label, built.declaration, out, tokens, 1)


def test_an_undeclared_head_is_refused(batch_out: tuple) -> None:
    built, out, tokens = batch_out
    features_only = dataclasses.replace(built.declaration, heatmap="", regression="", boxes="")
    with pytest.raises(TeacherOutputError, match=r"field 'head.heatmap': given but not declared"):
        check_output(built.label, features_only, out, tokens, 300)
    empty = TeacherOutput(out.features, HeadOutput(torch.empty(0), torch.empty(0)), [])
    check_output(built.label, features_only, empty, tokens, 300)  # a feature-only teacher


def test_a_grid_or_classes_other_than_the_stores_are_refused(world: dict, batch_out: tuple) -> None:  # fmt: skip
    built, _, _ = batch_out
    cfg = world["cfg"]
    other = small_config(world["root"], "grid.point_cloud_range=[-32, -32, -5, 32, 32, 3]")
    with pytest.raises(TeacherOutputError, match=r"x \[-25.6, 25.6\).*64x64.*x \[-32, 32\).*80x80"):  # fmt: skip
        check_declaration(built.label, built.declaration, other.grid.bev_grid, cfg.classes)
    with pytest.raises(TeacherOutputError, match=r"classes \['car', 'pedestrian'\]"):
        wrong = dataclasses.replace(built.declaration, classes=("car", "pedestrian"))
        check_declaration(built.label, wrong, cfg.grid.bev_grid, cfg.classes)
    # end to end: a cache config on another grid than the teacher builds on
    extra = "\n\ndef build_fixed(cfg, device, checkpoint):\n    import dataclasses\n    return build(dataclasses.replace(cfg, grid=dataclasses.replace(cfg.grid, point_cloud_range=(-32.0, -32.0, -5.0, 32.0, 32.0, 3.0))), device, checkpoint)\n"  # fmt: skip
    entry = write_teacher(world["base"] / "fixed_grid", extra).replace(":build", ":build_fixed")
    with pytest.raises(TeacherOutputError, match=r"teacher occupancy .*declares the BEV grid"):
        cache_teacher.run(cache_cfg(world["root"], entry, world["base"] / "grid.zarr"))


def test_a_bad_frame_stops_the_run_before_its_shard_is_written(world: dict, tmp_path: Path) -> None:  # fmt: skip
    cfg0 = cache_cfg(world["root"], world["entry"], tmp_path / "x.zarr", "cache.splits=[train]")
    bad = cache_teacher.select_frames(cfg0)[2].token  # in shard 1; shard 0 holds the probe
    extra = (
        f"\n\ndef build_nan(cfg, device, checkpoint):\n"
        f"    teacher = build(cfg, device, checkpoint)\n"
        f"    forward = teacher.forward\n\n"
        f"    def poisoned(batch):\n"
        f"        out = forward(batch)\n"
        f"        for b, token in enumerate(batch.tokens):\n"
        f"            if token == {bad!r}:\n"
        f"                out.features['lidar_bev'][b, 0, 0, 0] = float('nan')\n"
        f"        return out\n\n"
        f"    teacher.forward = poisoned\n"
        f"    return teacher\n"
    )
    entry = write_teacher(tmp_path / "nan", extra).replace(":build", ":build_nan")
    url = tmp_path / "nan.zarr"
    cfg = cache_cfg(world["root"], entry, url, "cache.splits=[train]")
    with pytest.raises(BevkdError, match=f"shard 1 failed: teacher occupancy .*, frame {bad}: field 'lidar_bev': 1 non-finite"):  # fmt: skip
        cache_teacher.run(cfg)
    assert StoreWriter.open(str(url)).pending_shards() == [1]


# ------------------------------------------------------------------------------------------
# Entries, factories and names
# ------------------------------------------------------------------------------------------


def test_two_teachers_naming_one_field_are_refused_before_anything_runs(world: dict, tmp_path: Path) -> None:  # fmt: skip
    cfg = cache_cfg(world["root"], f"lidar, {world['entry']}", tmp_path / "clash.zarr",
                    f"cache.lidar_checkpoint={tmp_path / 'absent.pt'}")  # fmt: skip
    with pytest.raises(BevkdError, match=r"'lidar_bev' would be written by both teacher lidar and teacher occupancy"):  # fmt: skip
        cache_teacher.run(cfg)
    twin = write_teacher(tmp_path / "twin")
    cfg = cache_cfg(world["root"], f"{world['entry']}, {twin}", tmp_path / "twin.zarr")
    with pytest.raises(BevkdError, match="both declare the name 'occupancy'"):
        cache_teacher.run(cfg)


def test_config_entries_and_factories_are_checked(world: dict, tmp_path: Path) -> None:
    root = world["root"]
    for bad in ("lidr", "teacher.py", "teacher.py:1x", "my-pkg.x:build"):
        with pytest.raises(ConfigError, match=r"or a custom teacher: my_pkg.teachers:build"):
            small_config(root, f"cache.teachers=[{bad}]")
    with pytest.raises(ConfigError, match="not a custom teacher entry"):
        small_config(root, "cache.teacher_checkpoints=[[lidar, w.pt]]")
    cfg = small_config(root, "cache.teachers=[my_pkg.teachers:build, lidar]")
    assert cfg.cache.teachers == ("my_pkg.teachers:build", "lidar")
    cpu = torch.device("cpu")
    with pytest.raises(CustomTeacherError, match=r"no module my_pkg.teachers on the Python path"):
        custom_teacher.build(cfg, "my_pkg.teachers:build", cpu)
    with pytest.raises(CustomTeacherError, match="no file"):
        custom_teacher.build(cfg, f"{tmp_path / 'absent.py'}:build", cpu)
    entry = write_teacher(tmp_path / "f", "\n\ndef plain(cfg, device, checkpoint):\n    return torch.nn.Linear(1, 1)\n")  # fmt: skip
    with pytest.raises(CustomTeacherError, match="defines no function missing"):
        custom_teacher.build(cfg, entry.replace(":build", ":missing"), cpu)
    with pytest.raises(CustomTeacherError, match="returned a Linear, which is not a Teacher"):
        custom_teacher.build(cfg, entry.replace(":build", ":plain"), cpu)
    # an importable module works the same as a file (its folder on the path)
    import sys

    sys.path.insert(0, str(tmp_path / "f"))
    try:
        built = custom_teacher.build(cfg, "occupancy_teacher:build", cpu)
        assert built.source == (tmp_path / "f" / "occupancy_teacher.py").resolve()
        assert built.declaration.name == "occupancy"
    finally:
        sys.path.remove(str(tmp_path / "f"))
        sys.modules.pop("occupancy_teacher", None)


def test_config_show_and_help_name_the_entry_forms() -> None:
    from bevkd.pipeline.commands.cache_teacher import command as cache_command
    from bevkd.pipeline.commands.config import command as config_command

    shown = CliRunner().invoke(config_command, ["show"])
    assert shown.exit_code == 0, shown.output
    assert "\ncache:\n  # teachers: lidar, fusion, label_encoder, or a custom teacher's factory: my_pkg.teachers:build" in shown.output  # fmt: skip
    helped = CliRunner().invoke(cache_command, ["--help"])
    assert "my_pkg.teachers:build or path/to/file.py:build" in " ".join(helped.output.split())
