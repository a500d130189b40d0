"""Config comments cite only files the project contains (a config that points a reader at
shared/MEASURED.md or METHODS.md sends them to notes they do not have)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
# A file name in a comment: something.md / .py / .yaml / .txt / .json, with or without folders.
CITED = re.compile(r"[\w./-]*\w\.(?:md|py|yaml|txt|json)\b")
GENERATED = ("work/", "<", "$")  # outputs of a run; "<out_dir>/x.txt" matches as "/x.txt"


def _exists(name: str) -> bool:
    path = name.lstrip("./")
    if (ROOT / path).exists():
        return True
    # a bare file name ("cache.yaml") names a file somewhere in the project's own folders
    skip = {".venv", "work", ".git", "build"}
    return "/" not in path and any(
        not set(p.relative_to(ROOT).parts) & skip for p in ROOT.glob(f"*/**/{path}")
    )


def test_there_are_configs_to_check() -> None:
    assert len(CONFIGS) >= 20, CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_config_comment_cites_only_files_the_project_has(config: Path) -> None:
    missing = []
    for number, line in enumerate(config.read_text().splitlines(), 1):
        if "#" not in line:
            continue
        comment = line.split("#", 1)[1]
        for name in CITED.findall(comment):
            if name.startswith(GENERATED) or "work/" in name or name.startswith("/"):
                continue
            if not _exists(name):
                missing.append(f"line {number}: {name}")
    assert not missing, f"{config.relative_to(ROOT)} cites files the project lacks: {missing}"


def test_the_check_finds_a_missing_file(tmp_path: Path) -> None:
    assert _exists("configs/demo/cache.yaml") and _exists("cache.yaml")
    assert not _exists("shared/MEASURED.md") and not _exists("METHODS.md")
