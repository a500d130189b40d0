"""The student side never imports spconv (or cumm, its runtime): DESIGN.md's contract.

Checked in a fresh interpreter, because this test process may already hold spconv.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

# Every module a camera student (stage two) may import. Extend it as the student side grows.
STUDENT_SIDE_MODULES: tuple[str, ...] = (
    "bevkd.models",
    "bevkd.models.outputs",
    "bevkd.models.protocol",
    "bevkd.models.head",
    "bevkd.models.targets",
    "bevkd.models.box_coder",
    "bevkd.models.bev_backbone",
    "bevkd.models.builders",
    "bevkd.models.camera_bev",
    "bevkd.models.image_backbone",
    "bevkd.models.checkpoint",
    "bevkd.storage.reader",
    "bevkd.datasets.cached",
    "bevkd.datasets.student_batch",
    "bevkd.models.camera_student",
    "bevkd.distill.losses",
    "bevkd.distill.recipes",
    "bevkd.stages.student_contract",
    "bevkd.stages.train_student",
    "bevkd.datasets.dataset",
    "bevkd.distill",
)

# The LiDAR teacher's sparse encoder, which must pull spconv in (proves the check can fail).
SPCONV_MODULE = "bevkd.models.sparse_encoder"


def _loaded_after_import(modules: tuple[str, ...]) -> set[str]:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(','.join(sorted(m for m in ('spconv', 'cumm') if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return (
        set(filter(None, result.stdout.strip().splitlines()[-1].split(",")))
        if result.stdout.strip()
        else set()
    )


def test_student_side_never_imports_spconv() -> None:
    missing = [m for m in STUDENT_SIDE_MODULES if importlib.util.find_spec(m) is None]
    assert not missing, f"listed student-side modules do not exist: {missing}"
    assert _loaded_after_import(STUDENT_SIDE_MODULES) == set()


def test_the_check_sees_spconv_when_it_is_imported() -> None:
    assert _loaded_after_import((SPCONV_MODULE,)) == {"spconv", "cumm"}
