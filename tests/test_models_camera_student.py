"""The camera student at each shipped config: its BEV scales have the shapes of the store's
``lidar_bev`` / ``lidar_bev_s2``, its head the teachers' grid, its depth logits the LiDAR
depth maps' stride; decoding returns boxes per frame."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bevkd.models.camera_student import build_camera_student
from bevkd.models.outputs import REGRESSION_CHANNELS
from bevkd.pipeline.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    "name", ["demo/student_cmkd.yaml", "kitti/student_cmkd.yaml", "nuscenes/student_cmkd.yaml"]
)
def test_student_shapes_match_the_store_at_each_config(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    torch.manual_seed(0)
    student = build_camera_student(cfg).eval()
    height, width = cfg.data.image_size
    cams = len(cfg.data.cameras)

    class Inputs:  # what the student reads of a StudentBatch
        images = torch.randn(1, cams, 3, height, width)
        cam2img = torch.eye(4).repeat(1, cams, 1, 1)
        cam2ego = torch.eye(4).repeat(1, cams, 1, 1)

    Inputs.cam2img[..., 0, 0] = Inputs.cam2img[..., 1, 1] = 100.0
    Inputs.cam2img[..., 0, 2], Inputs.cam2img[..., 1, 2] = width / 2, height / 2
    with torch.no_grad():
        out = student(Inputs, decode=True)
    rows, cols = cfg.grid.bev_shape
    c = cfg.student.bev_channels
    assert out.features["bev"].shape == (1, c, rows, cols)
    assert out.features["bev_s2"].shape == (1, 2 * c, rows // 2, cols // 2)
    assert out.features["camera_bev"].shape == (1, cfg.model.camera_bev_channels, rows, cols)
    assert out.head.heatmap.shape == (1, len(cfg.classes), rows, cols)
    assert out.head.regression.shape == (1, len(REGRESSION_CHANNELS), rows, cols)
    stride = cfg.data.depth_stride
    assert out.depth_logits.shape[0] == cams and out.depth_logits.shape[-2:] == (
        height // stride,
        width // stride,
    )
    assert len(out.detections) == 1


def test_phase_two_starts_from_the_phase_one_student(tmp_path: Path) -> None:
    """CMKD's phase 2 (``student.init_from``) copies every weight of the phase-1 checkpoint."""
    from bevkd.models.checkpoint import init_from_checkpoint, save_checkpoint

    cfg = load_config(CONFIGS / "demo/student_cmkd.yaml", ["distill.response=false"])
    torch.manual_seed(0)
    phase1 = build_camera_student(cfg)
    path = save_checkpoint(tmp_path / "phase1.pt", phase1, cfg)
    torch.manual_seed(1)
    phase2 = build_camera_student(cfg)
    assert not torch.equal(phase2.head.shared[0].weight, phase1.head.shared[0].weight)
    copied, skipped = init_from_checkpoint(phase2, "camera", path)
    assert skipped == 0 and copied == len(phase1.state_dict())
    for key, value in phase1.state_dict().items():
        assert torch.equal(phase2.state_dict()[key], value), key
