"""KITTI split lists: where a split name's list file is, and what its lines name.

A list holds one frame per line, and may mix two kinds (CMKD's
``kitti_train_and_eigen_clean.txt`` does):

- a KITTI object id, 6 digits (``000123``) -> ``<object_root>/<training|testing>/...``;
- a KITTI raw frame, ``<date>/<date>_drive_<nnnn>_sync/image_02/data/<10 digits>``
  -> ``<raw_root>/<date>/<drive>/{image_02,velodyne_points}/data/<frame>.{png,bin}``.

The lists CMKD uses ship with bevkd as package data (``datasets/kitti_splits/``, see its
README).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bevkd.pipeline.errors import DataError

BUNDLED_SPLITS = Path(__file__).parent / "kitti_splits"

OBJECT_ID = re.compile(r"^\d{6}$")
RAW_FRAME = re.compile(
    r"^(?P<date>\d{4}_\d{2}_\d{2})/(?P<drive>(?P=date)_drive_\d{4}_sync)/image_02/data/(?P<frame>\d{10})$"
)


@dataclass(frozen=True)
class SplitEntry:
    """One line of a split list. ``kind`` is ``"object"`` or ``"raw"``; ``line`` is 1-based.

    Raw entries also carry ``date``, ``drive`` and ``frame`` (the 10-digit number).
    """

    token: str
    kind: str
    line: int
    date: str = ""
    drive: str = ""
    frame: str = ""


def split_list_path(split: str, object_root: str | Path | None = None) -> Path:
    """The list file of ``split``: a path to an existing file is used as is; a name is looked
    up as ``<object_root>/ImageSets/<name>.txt``, then beside the object folder
    (``<root>/ImageSets/`` when the object root is ``<root>/object``, as OpenPCDet keeps them),
    then among the lists bundled with bevkd."""
    as_path = Path(split)
    if as_path.suffix == ".txt" or "/" in split:
        if as_path.is_file():
            return as_path
        raise DataError(f"split list {as_path} not found")
    candidates = []
    if object_root is not None:
        candidates.append(Path(object_root) / "ImageSets" / f"{split}.txt")
        if Path(object_root).name == "object":
            candidates.append(Path(object_root).parent / "ImageSets" / f"{split}.txt")
    candidates.append(BUNDLED_SPLITS / f"{split}.txt")
    for path in candidates:
        if path.is_file():
            return path
    names = sorted(p.stem for p in BUNDLED_SPLITS.glob("*.txt"))
    tried = ", ".join(str(p) for p in candidates)
    raise DataError(
        f"no list for KITTI split '{split}' (tried {tried}); use one of {names} or a path "
        f"to a list file"
    )


@cache
def announce_list(split: str, path: Path) -> None:
    """Say once per process which file a split name resolved to (a user's own list, or the
    bundled one), on stderr."""
    bundled = path.parent == BUNDLED_SPLITS
    where = (
        "bevkd's bundled list; an ImageSets/<name>.txt in the object root or beside it replaces it"
        if bundled
        else "your list"
    )
    print(f"[kitti] split '{split}': {path} ({where})", file=sys.stderr)


def parse_split_line(text: str, where: str, line: int) -> SplitEntry:
    """Classify one stripped, non-empty line; ``where`` names the list for errors."""
    if OBJECT_ID.match(text):
        return SplitEntry(token=text, kind="object", line=line)
    match = RAW_FRAME.match(text)
    if match:
        return SplitEntry(
            token=text,
            kind="raw",
            line=line,
            date=match["date"],
            drive=match["drive"],
            frame=match["frame"],
        )
    raise DataError(
        f"{where}:{line}: '{text[:80]}' is neither a KITTI object id (6 digits) nor a raw frame "
        f"(<date>/<date>_drive_<nnnn>_sync/image_02/data/<10 digits>)"
    )


def read_split_list(path: str | Path) -> list[SplitEntry]:
    """All entries of a list file, in order; blank lines are skipped, duplicates are errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split list {path} not found")
    entries: list[SplitEntry] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        text = raw.strip()
        if not text:
            continue
        if text in seen:
            raise DataError(f"{path}:{number}: '{text}' repeats line {seen[text]}")
        seen[text] = number
        entries.append(parse_split_line(text, str(path), number))
    return entries
