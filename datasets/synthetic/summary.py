"""What a written synthetic dataset holds, read back from its files (no devkit needed)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bevkd.datasets.synthetic.catalog import KINDS

# nuScenes category -> detection class of the world's kinds.
_DETECTION = {kind.category: kind.detection for kind in KINDS.values()}


@dataclass
class DatasetSummary:
    """Frame and box counts of a written dataset; ``boxes`` by nuScenes detection class
    (nuScenes) or KITTI type (KITTI)."""

    fmt: str
    frames: dict[str, int] = field(default_factory=dict)
    boxes: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        frames = ", ".join(f"{v} {k}" for k, v in self.frames.items())
        boxes = ", ".join(f"{k} {v}" for k, v in self.boxes.most_common())
        return [f"frames: {frames}", f"boxes ({sum(self.boxes.values())}): {boxes}"]


def summarize(root: Path | str, fmt: str) -> DatasetSummary:
    """Count the keyframes, sweeps and annotations (nuScenes), object/raw frames and labels
    (KITTI) or segments, frames and ``lidar_box`` rows by type (Waymo v2) under ``root``."""
    root = Path(root)
    out = DatasetSummary(fmt)
    if fmt == "nuscenes":
        tables = root / "v1.0-trainval"
        samples = json.loads((tables / "sample.json").read_text())
        sample_data = json.loads((tables / "sample_data.json").read_text())
        lidar = [
            sd
            for sd in sample_data
            if sd["filename"].startswith(("samples/LIDAR_TOP", "sweeps/LIDAR_TOP"))
        ]
        out.frames = {
            "keyframes": len(samples),
            "sweeps": sum(not sd["is_key_frame"] for sd in lidar),
            "scenes": len(json.loads((tables / "scene.json").read_text())),
        }
        category = {
            c["token"]: c["name"] for c in json.loads((tables / "category.json").read_text())
        }
        instance = {
            i["token"]: category[i["category_token"]]
            for i in json.loads((tables / "instance.json").read_text())
        }
        for ann in json.loads((tables / "sample_annotation.json").read_text()):
            out.boxes[_DETECTION[instance[ann["instance_token"]]]] += 1
        return out
    if fmt == "waymo":
        return _waymo(root, out)
    sets = root / "object" / "ImageSets"
    for name in ("train", "val", "test"):
        text = (sets / f"{name}.txt").read_text()
        out.frames[f"object {name}"] = len(text.split("\n")) if text else 0
    out.frames["raw"] = len((sets / "eigen_clean.txt").read_text().splitlines())
    for label in sorted((root / "object" / "training" / "label_2").glob("*.txt")):
        out.boxes.update(line.split(" ", 1)[0] for line in label.read_text().splitlines())
    return out


def _waymo(root: Path, out: DatasetSummary) -> DatasetSummary:
    import pyarrow.parquet as pq

    from bevkd.datasets import waymo_schema as ws

    type_names = {number: name for name, number in ws.BOX_TYPES.items()}
    for split in sorted(p.name for p in root.iterdir() if (p / ws.VEHICLE_POSE).is_dir()):
        segments = sorted((root / split / ws.VEHICLE_POSE).glob("*.parquet"))
        out.frames[f"{split} segments"] = len(segments)
        out.frames[f"{split} frames"] = sum(pq.read_metadata(s).num_rows for s in segments)
        for boxes in sorted((root / split / ws.LIDAR_BOX).glob("*.parquet")):
            types = pq.read_table(boxes, columns=[ws.BOX_TYPE]).column(0).to_pylist()
            out.boxes.update(type_names.get(t, str(t)) for t in types)
    return out
