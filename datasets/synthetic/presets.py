"""Dataset sizes. Every preset renders the same kind of world; only how much of it differs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """``train_scenes`` + ``val_scenes`` scenes of ``keyframes`` annotated samples (2 Hz) with
    ``sweeps_between`` unannotated sweeps before each keyframe. nuScenes cameras render at
    ``image_scale`` x 1600x900; the LiDAR has ``azimuth_steps`` rays per beam.

    KITTI (same world): the keyframes of the train/val scenes become ``object/training``
    frames; ``kitti_test_scenes`` more scenes give ``object/testing``; ``kitti_raw_drives``
    further scenes give raw drives (every keyframe and sweep a frame).
    """

    name: str
    train_scenes: int
    val_scenes: int
    keyframes: int
    sweeps_between: int
    image_scale: float
    azimuth_steps: int
    kitti_test_scenes: int
    kitti_raw_drives: int
    kitti_azimuth_steps: int

    @property
    def scenes(self) -> int:
        return self.train_scenes + self.val_scenes


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny", 1, 1, 3, 1, 0.15, 1084, 1, 1, 1024),
        Preset("demo", 6, 2, 12, 1, 0.22, 1084, 1, 2, 1024),
        Preset("bench", 24, 6, 20, 2, 0.22, 1084, 4, 6, 1024),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a ValueError lists the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
