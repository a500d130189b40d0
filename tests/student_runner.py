"""Run ``bevkd.stages.train_student.run`` from the command line, for tests that need it in its
own process: under ``torchrun`` (real two-process gloo DDP), or to be killed with SIGKILL.

Usage: ``python tests/student_runner.py DATA_ROOT [OVERRIDE ...]``, the overrides as in
``stage_helpers.small_config``. Rank 0 prints ``{"steps": N}`` as its last line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from stage_helpers import small_config

from bevkd.stages.train_student import run


def main(argv: list[str]) -> None:
    result = run(small_config(Path(argv[0]), *argv[1:]))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"steps": result.steps}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
