"""CMKD's distilled layer and its phase 2 (issue 24).

- ``distill.bev_layer=map_to_bev``: the recipe compares the student's ``camera_bev`` (its LSS
  output, before its BEV encoder) with the store's ``lidar_bev_pre`` (the teacher's
  map-to-BEV output, before its 2D backbone); the term is the MSE written out by hand.
- A store without ``lidar_bev_pre`` (the committed v1 golden store, written before the field
  existed) still opens, and a student that needs the field is refused naming
  ``cache.lidar_bev_pre``; a channel mismatch names ``model.camera_bev_channels``.
- ``student.init_from_teacher``: the LiDAR teacher's 2D backbone, neck and head become the
  student's BEV encoder, neck and head tensor for tensor; a student of other sizes is refused
  naming the settings, with nothing copied.

The store-side checks (the field equals the teacher's own map-to-BEV output; the online path
gives it within the codec error) are in test_stage_cache_teacher.py and test_online_teacher.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_distill_losses import make_batch, small_cfg

from bevkd.datasets.student_batch import collate_targets
from bevkd.distill.recipes import CMKD, build_recipe
from bevkd.models.builders import build_teacher
from bevkd.models.camera_student import StudentOutput, build_camera_student
from bevkd.models.checkpoint import CheckpointError, init_from_teacher, save_checkpoint
from bevkd.models.outputs import HeadOutput
from bevkd.pipeline.config import ConfigError, load_config
from bevkd.stages.student_contract import check_store, store_problems
from bevkd.storage.fields import bev_feature_field
from bevkd.storage.reader import open_store
from bevkd.storage.schema import ContractMismatch, StoreContract

GOLDEN = Path(__file__).parent / "data" / "teacher_store_v1.zarr"
H = W = 16  # small_cfg's BEV grid
PRE = 6  # the student's camera_bev channels here: not student.bev_channels (8)
MAP_TO_BEV = ("model.camera_bev_channels=6", "distill.bev_layer=map_to_bev")


def _output(seed: int = 3) -> StudentOutput:
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_(True)

    features = {
        "camera_bev": leaf(2, PRE, H, W),
        "bev": leaf(2, 8, H, W),
        "bev_s2": leaf(2, 16, 8, 8),
    }
    return StudentOutput(
        features, HeadOutput(leaf(2, 10, H, W), leaf(2, 10, H, W)), leaf(2, 8, 4, 8)
    )


def test_map_to_bev_layer_reads_lidar_bev_pre_against_camera_bev() -> None:
    cfg = small_cfg("student.recipe=cmkd", *MAP_TO_BEV)
    recipe = build_recipe(cfg)
    assert isinstance(recipe, CMKD)
    # the real student's camera_bev is the shape the recipe asks of the store's lidar_bev_pre
    student = build_camera_student(cfg).eval()
    with torch.no_grad():
        out = student(make_batch([True, False]))
    assert recipe.expects["lidar_bev_pre"] == tuple(out.features["camera_bev"].shape[1:])
    assert recipe.expects["lidar_bev_pre"] == (PRE, H, W)
    assert "lidar_bev" not in recipe.expects  # the backbone layer is not read at all
    # the default stays the backbone layer: lidar_bev against the BEV encoder's output
    default = build_recipe(small_cfg("student.recipe=cmkd")).expects
    assert "lidar_bev" in default and "lidar_bev_pre" not in default


def test_map_to_bev_term_is_the_hand_computed_mse() -> None:
    cfg = small_cfg("student.recipe=cmkd", *MAP_TO_BEV, "distill.bev_weight=3",
                    "distill.response=false")  # fmt: skip
    g = torch.Generator().manual_seed(5)
    teacher = [torch.randn(PRE, H, W, generator=g) for _ in range(2)]
    targets = collate_targets([{"lidar_bev_pre": teacher[0]}, {"lidar_bev_pre": teacher[1]}])
    out = _output()
    terms = build_recipe(cfg)(out, make_batch([True, False], targets))
    # 3 * sum over both frames, channels and cells of (student - teacher)^2 / (C * B * H * W)
    s = out.features["camera_bev"].detach().flatten().tolist()
    t = torch.stack(teacher).flatten().tolist()
    expected = 3.0 * math.fsum((a - b) ** 2 for a, b in zip(s, t, strict=True)) / (PRE * 2 * H * W)
    assert terms["kd_bev"].item() == pytest.approx(expected, rel=1e-5)
    assert "kd_bev_s2" not in terms
    # its gradient reaches camera_bev only, never the BEV encoder's output
    terms["kd_bev"].backward()
    assert out.features["camera_bev"].grad is not None and out.features["bev"].grad is None


def test_map_to_bev_has_one_scale_and_a_known_name() -> None:
    with pytest.raises(ConfigError, match=r"bev_layer=map_to_bev.*bev_scales.*\[1\]"):
        load_config(None, ["distill.bev_layer=map_to_bev", "distill.bev_scales=[1, 2]"])
    with pytest.raises(ConfigError, match=r"distill\.bev_layer: 'map' is not one of"):
        load_config(None, ["distill.bev_layer=map"])


def test_a_store_without_lidar_bev_pre_still_reads_and_names_the_cache_key() -> None:
    cfg = small_cfg("student.recipe=cmkd", *MAP_TO_BEV, "distill.response=false")
    recipe = build_recipe(cfg)
    store = open_store(str(GOLDEN))  # written before the field existed: it opens unchanged
    assert "lidar_bev_pre" not in store.contract.field_names
    assert store.read_frame(0)["lidar_bev"].shape == store.contract.field("lidar_bev").shape
    with pytest.raises(ContractMismatch) as missing:
        check_store(store.contract, cfg, recipe.expects, str(GOLDEN))
    text = str(missing.value)
    assert "'lidar_bev_pre' is missing" in text and "cache.lidar_bev_pre=true" in text
    assert "add lidar to cache.teachers" in text
    # The same store read at the backbone layer is fine: the field is optional.
    backbone = small_cfg("student.recipe=cmkd", "distill.response=false")
    assert not store_problems(store.contract, backbone, build_recipe(backbone).expects)


def test_a_lidar_bev_pre_of_other_channels_names_model_camera_bev_channels() -> None:
    cfg = small_cfg("student.recipe=cmkd", *MAP_TO_BEV, "distill.response=false")
    golden = open_store(str(GOLDEN)).contract
    contract = StoreContract(golden.schema_version, golden.grid, golden.classes,
                             (*golden.fields, bev_feature_field("lidar_bev_pre", 32, H, W)))  # fmt: skip
    problems = store_problems(contract, cfg, build_recipe(cfg).expects)
    assert len(problems) == 1
    assert "(32, 16, 16)" in problems[0] and "(6, 16, 16)" in problems[0]
    assert "model.camera_bev_channels=6" in problems[0]


# ------------------------------------------------------------------------------------------
# Phase 2: the teacher's 2D backbone, neck and head into the student
# ------------------------------------------------------------------------------------------

TEACHER_SIZES = ("model.sparse_channels=[8, 16, 16, 16]", "model.bev_channels=8",
                 "model.bev_backbone_layers=[1, 1]", "model.head_channels=8")  # fmt: skip


def _teacher(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    cfg = small_cfg("model.kind=lidar", *TEACHER_SIZES)
    teacher = build_teacher(cfg)
    for p in teacher.parameters():  # away from any default init, so equality means copied
        p.data.normal_()
    for name, buffer in teacher.named_buffers():
        if name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
    return teacher, save_checkpoint(tmp_path / "lidar.pt", teacher, cfg)


def test_init_from_teacher_copies_backbone_neck_and_head(tmp_path: Path) -> None:
    teacher, path = _teacher(tmp_path)
    pre = teacher.encoder.out_channels  # 16 x 2 z cells = 32: the map-to-BEV channels
    cfg = small_cfg(f"model.camera_bev_channels={pre}", "student.bev_layers=[1, 1]")
    torch.manual_seed(1)
    student = build_camera_student(cfg)
    camera_before = {k: v.clone() for k, v in student.camera.state_dict().items()}
    copied = init_from_teacher(student, cfg, path)
    pairs = ((teacher.backbone, student.encoder), (teacher.neck_module, student.neck),
             (teacher.head, student.head))  # fmt: skip
    assert copied == sum(len(t.state_dict()) for t, _ in pairs)
    for source, target in pairs:
        want, got = source.state_dict(), target.state_dict()
        assert want.keys() == got.keys()
        for name, value in want.items():
            assert torch.equal(got[name], value), name
    for name, value in student.camera.state_dict().items():  # the camera part is not the teacher's
        assert torch.equal(value, camera_before[name]), name
    # the copied backbone on the teacher's map-to-BEV output gives the teacher's lidar_bev
    bev = torch.randn(1, pre, H, W)
    teacher.eval()
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            student.encoder(bev)["lidar_bev"], teacher.backbone(bev)["lidar_bev"]
        )


def test_init_from_teacher_refuses_other_sizes_and_copies_nothing(tmp_path: Path) -> None:
    _, path = _teacher(tmp_path)
    cfg = small_cfg("student.bev_layers=[1, 1]")  # camera_bev_channels 8, not the teacher's 32
    student = build_camera_student(cfg)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"model\.camera_bev_channels=32.*student\.bev_channels=8.*bev_layers=\[1, 1\].*head_channels=8"):  # fmt: skip
        init_from_teacher(student, cfg, path)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    # more BEV encoder layers than the teacher has: refused too, not silently half-copied
    deeper = small_cfg("model.camera_bev_channels=32", "student.bev_layers=[2, 1]")
    with pytest.raises(CheckpointError, match=r"the teacher has none"):
        init_from_teacher(build_camera_student(deeper), deeper, path)
    sim = small_cfg("model.kind=camera_sim")
    with pytest.raises(CheckpointError, match=r"only the camera student"):
        init_from_teacher(torch.nn.Linear(1, 1), sim, path)


def test_train_student_builds_cmkd_phase_2_at_the_map_to_bev_layer(
    tiny_nuscenes: Path, tmp_path: Path
) -> None:
    """The whole path on the tiny world: a store cached with ``cache.lidar_bev_pre``, a student
    whose BEV encoder, neck and head come from that store's LiDAR teacher
    (``student.init_from_teacher``) and whose ``kd_bev`` reads ``lidar_bev_pre``."""
    from stage_helpers import cached_world, small_config

    from bevkd.datasets.student_batch import collate_student
    from bevkd.models.checkpoint import load_teacher
    from bevkd.pipeline.distributed import DistInfo
    from bevkd.stages import train_student

    root, (lidar, _), url = cached_world(
        tiny_nuscenes, tmp_path, "cache.teachers=[lidar]", "cache.lidar_bev_pre=true",
        "cache.splits=[train]",
    )  # fmt: skip
    teacher, teacher_cfg, _ = load_teacher(lidar)
    pre = teacher.encoder.out_channels
    assert open_store(str(url)).contract.field("lidar_bev_pre").shape[0] == pre
    cfg = small_config(
        root, "model.kind=camera", "student.recipe=cmkd", f"student.store={url}",
        "distill.bev_layer=map_to_bev", "distill.response=false", "distill.bev_weight=1",
        f"model.camera_bev_channels={pre}", f"student.bev_channels={teacher_cfg.model.bev_channels}",
        f"student.init_from_teacher={lidar}", f"train.out_dir={tmp_path / 'out'}",
    )  # fmt: skip
    objective, dataset = train_student.build(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    student = objective.model
    for source, target in ((teacher.backbone, student.encoder), (teacher.head, student.head)):
        for name, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[name], value), name
    assert list(dataset.fields) == ["lidar_bev_pre"]
    batch = collate_student([dataset[(0, i)] for i in range(2)])
    assert batch.targets.field("lidar_bev_pre").shape == (2, pre, *cfg.grid.bev_shape)
    terms = objective(batch)
    assert torch.isfinite(terms["kd_bev"]) and terms["kd_bev"].item() > 0
