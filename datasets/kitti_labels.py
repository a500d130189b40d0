"""KITTI object labels (``label_2/<id>.txt``) and detections in the same format.

One object per line, 15 fields (16 with a trailing detection score)::

    type truncated occluded alpha  left top right bottom  h w l  x y z  rotation_y [score]

``truncated`` in [0, 1] (DontCare: -1), ``occluded`` 0 visible .. 3 unknown (DontCare: -1),
``alpha`` observation angle, the 2D box in pixels of ``image_2``, dimensions in metres,
location = the *bottom centre* of the box in the rectified camera frame (x right, y down,
z forward), ``rotation_y`` = heading about the camera's y axis: the object's length axis
points along ``(cos ry, 0, -sin ry)`` in rect coordinates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bevkd.pipeline.errors import DataError

KITTI_TYPES = (
    "Car",
    "Van",
    "Truck",
    "Pedestrian",
    "Person_sitting",
    "Cyclist",
    "Tram",
    "Misc",
    "DontCare",
)

# KITTI type -> bevkd class name (nuScenes vocabulary). A type becomes a training box only when
# its bevkd name is in the experiment's class list. Types mapped to None never train; they stay
# in the label files for evaluation: Van and Person_sitting are the devkit's "neighbouring"
# classes (neither TP nor FP for Car / Pedestrian), so teaching them as background matches
# OpenPCDet, which CMKD's teachers were trained with; Tram, Misc and DontCare have no
# counterpart. Cyclist is a rider on a bicycle, as nuScenes' "bicycle" boxes are.
KITTI_TO_BEVKD: dict[str, str | None] = {
    "Car": "car",
    "Van": None,
    "Truck": "truck",
    "Pedestrian": "pedestrian",
    "Person_sitting": None,
    "Cyclist": "bicycle",
    "Tram": None,
    "Misc": None,
    "DontCare": None,
}
# bevkd class -> the KITTI type its detections are written as, for evaluation.
BEVKD_TO_KITTI: dict[str, str] = {v: k for k, v in KITTI_TO_BEVKD.items() if v is not None}

LABEL_FIELDS = 15


@dataclass(frozen=True)
class KittiObject:
    """One line of a KITTI label or detection file (see the module docstring for frames).

    ``bbox`` = (left, top, right, bottom) px; ``dimensions`` = (h, w, l) m; ``location`` =
    bottom centre (x, y, z) in rect; ``score`` is None for ground truth.
    """

    type: str
    truncated: float
    occluded: int
    alpha: float
    bbox: tuple[float, float, float, float]
    dimensions: tuple[float, float, float]
    location: tuple[float, float, float]
    rotation_y: float
    score: float | None = None

    @property
    def height_px(self) -> float:
        """Height of the 2D box in pixels (the difficulty criterion)."""
        return self.bbox[3] - self.bbox[1]


def parse_label_line(line: str, where: str) -> KittiObject:
    """Parse one line; ``where`` (``file:line``) prefixes error messages."""
    fields = line.split()
    if len(fields) not in (LABEL_FIELDS, LABEL_FIELDS + 1):
        raise DataError(
            f"{where}: expected {LABEL_FIELDS} fields (type, truncated, occluded, alpha, 4 bbox, "
            f"3 dimensions, 3 location, rotation_y) or {LABEL_FIELDS + 1} with a score, got "
            f"{len(fields)}: '{line.strip()[:80]}'"
        )
    try:
        numbers = [float(v) for v in fields[1:]]
    except ValueError:
        raise DataError(
            f"{where}: a numeric field is not a number: '{line.strip()[:80]}'"
        ) from None
    return KittiObject(
        type=fields[0],
        truncated=numbers[0],
        occluded=int(numbers[1]),
        alpha=numbers[2],
        bbox=(numbers[3], numbers[4], numbers[5], numbers[6]),
        dimensions=(numbers[7], numbers[8], numbers[9]),
        location=(numbers[10], numbers[11], numbers[12]),
        rotation_y=numbers[13],
        score=numbers[14] if len(numbers) == LABEL_FIELDS else None,
    )


def read_label(path: str | Path) -> list[KittiObject]:
    """All objects of a label (or detection) file; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"KITTI label file {path} not found")
    return [
        parse_label_line(line, f"{path}:{number}")
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if line.strip()
    ]


def format_label_line(obj: KittiObject) -> str:
    """One line in KITTI's layout; a score column is written when ``obj.score`` is set."""
    values = [
        f"{obj.truncated:.2f}",
        f"{obj.occluded:d}",
        f"{obj.alpha:.4f}",
        *(f"{v:.4f}" for v in obj.bbox),
        *(f"{v:.4f}" for v in obj.dimensions),
        *(f"{v:.4f}" for v in obj.location),
        f"{obj.rotation_y:.4f}",
    ]
    if obj.score is not None:
        values.append(f"{obj.score:.6f}")
    return " ".join([obj.type, *values])


def write_label(path: str | Path, objects: Iterable[KittiObject]) -> None:
    """Write a label/detection file (an empty file for no objects, as the devkit expects)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [format_label_line(obj) for obj in objects]
    path.write_text("".join(line + "\n" for line in lines))
