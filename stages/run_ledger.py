"""The run ledger: a finished benchmark arm's result, kept in git so a fresh clone has it.

``work/`` is not in git; a finished arm's evaluation lives there and is gone in the next
checkout. So when an arm finishes, its record goes into its run folder (``run.json``) and into
``benchmarks/runs/<folder under work/>.json`` (tracked): the evaluation, the resolved config's
sha256, the code version that trained it (commit + dirty flag), the wall seconds train_arm
timed, and the optimizer steps and frame counts read from the run's own log. A run folder
outside the repository's ``work/`` (a test's, a user's own) gets ``run.json`` only.

A found result is reused whatever code made it, but one not made by this commit's clean tree
(another commit, or a tree with uncommitted changes) is *marked*: :func:`code_mark` gives
``{"commit": ..., "dirty": ...}``, which :func:`bevkd.stages.demo_students.arm_metrics` puts
under ``"reused"`` so a report can flag the number (:func:`dagger`, :func:`footnote`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bevkd.pipeline.provenance import code_version, now_iso

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "work"
LEDGER = REPO / "benchmarks" / "runs"
UNKNOWN = {"commit": "unknown", "dirty": True}
FRAMES = re.compile(r"\[train-student\] (\d+) labelled \+ (\d+) unlabelled frames")
EPOCH = re.compile(r"^epoch \d+/\d+: \d+ steps in ([0-9.]+) s", re.MULTILINE)


def ledger_file(folder: Path) -> Path | None:
    """``benchmarks/runs/<folder relative to work/>.json``; None for a folder outside work/."""
    try:
        rel = folder.resolve().relative_to(WORK.resolve())
    except ValueError:
        return None
    return LEDGER / f"{rel.as_posix()}.json"


def eval_metrics(folder: Path) -> dict[str, Any] | None:
    """A finished run's final validation: ``eval/metrics.json`` (nuScenes) or
    ``eval/kitti_ap.json`` (KITTI AP|R40); None while it has none."""
    for name in ("metrics.json", "kitti_ap.json"):
        path = folder / "eval" / name
        if path.is_file():
            return json.loads(path.read_text())  # type: ignore[no-any-return]
    return None


def from_log(folder: Path) -> dict[str, Any]:
    """What the run's own files say: the last optimizer step logged (``train_log.jsonl``), the
    labelled and unlabelled frame counts and the summed epoch seconds (``train.out``, the
    ``train-student`` output train_arm keeps); None where a file is missing."""
    steps = frames = epoch_s = None
    log = folder / "train_log.jsonl"
    if log.is_file():
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        steps = max((int(r["step"]) for r in rows if "step" in r), default=None)
    out = folder / "train.out"
    if out.is_file():
        text = out.read_text(errors="replace")
        if found := FRAMES.findall(text):
            frames = {"labelled": int(found[-1][0]), "unlabelled": int(found[-1][1])}
        if seconds := EPOCH.findall(text):
            epoch_s = round(sum(float(s) for s in seconds), 1)
    return {"steps": steps, "frames": frames, "epoch_s": epoch_s}


def checkpoint_code(folder: Path) -> dict[str, Any]:
    """The code version a run's last checkpoint recorded (runs older than ``run.json``)."""
    for name in ("last.pt", "best.pt"):
        if (folder / name).is_file():
            from bevkd.models.checkpoint import CheckpointError, load_checkpoint

            try:
                code = load_checkpoint(folder / name).get("provenance", {}).get("code")
            except CheckpointError:
                continue
            if code:
                return {"commit": code["commit"], "dirty": bool(code["dirty"])}
    return dict(UNKNOWN)


def record(
    folder: Path, name: str, config: str, config_sha256: str, code: dict[str, Any],
    wall_s: float | None, resumed: bool, metrics: dict[str, Any],
    store: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A finished run's record (what ``run.json`` and the ledger hold); ``store``: the
    :func:`store_identity` of the store it read (None: it reads no teacher field)."""
    return {
        "store": store,
        "arm": name,
        "config": config,
        "config_sha256": config_sha256,
        "code": {"commit": code["commit"], "dirty": bool(code["dirty"])},
        "wall_s": None if wall_s is None else round(wall_s, 1),
        "resumed": resumed,
        **from_log(folder),
        "recorded_at": now_iso(),
        "metrics": metrics,
    }


def write(folder: Path, entry: dict[str, Any]) -> None:
    """``run.json`` in the run folder, and the ledger file when the folder is under work/."""
    text = json.dumps(entry, indent=1, sort_keys=True) + "\n"
    (folder / "run.json").write_text(text)
    if (path := ledger_file(folder)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def find(folder: Path) -> tuple[dict[str, Any], str] | None:
    """A finished run's record and where it came from (``"work"`` or ``"ledger"``): the run
    folder's evaluation first (its ``run.json``, or for an older run the code version of its
    checkpoint), then the ledger; None when neither has it."""
    metrics = eval_metrics(folder)
    if metrics is not None:
        saved = folder / "run.json"
        entry = (
            json.loads(saved.read_text()) if saved.is_file() else {"code": checkpoint_code(folder)}
        )
        return {**entry, "metrics": metrics}, "work"  # the evaluation on disk wins
    path = ledger_file(folder)
    if path is not None and path.is_file():
        return json.loads(path.read_text()), "ledger"
    return None


def store_identity(url: str) -> dict[str, Any]:
    """What a student learns from in a store, as a comparable record: each teacher's weights
    (:func:`bevkd.models.checkpoint.weights_sha256`, equal for a teacher retrained to the same
    weights in a fresh clone; the checkpoint file's sha256 where neither the store nor the
    file gives them), the frames and the fields' codecs."""
    from bevkd.storage.reader import open_store

    store = open_store(url)
    finalized = store.attrs.get("finalized")
    at = finalized["at"] if isinstance(finalized, dict) else None
    return json.loads(json.dumps(_identity(url, at)))  # a copy: callers keep their own


@functools.lru_cache(maxsize=16)
def _identity(url: str, finalized_at: str | None) -> dict[str, Any]:
    """:func:`store_identity` once per store and finalization: a report asks for it per arm
    and seed, and a teacher's weights hash loads its checkpoint."""
    from bevkd.models.checkpoint import load_checkpoint, weights_sha256
    from bevkd.pipeline.provenance import sha256_file
    from bevkd.storage.reader import open_store

    store = open_store(url)
    made = store.provenance
    teachers = {}
    for name, teacher in sorted(made.get("teachers", {}).items()):
        weights = teacher.get("weights_sha256")
        path = Path(teacher.get("checkpoint", ""))
        if weights is None and path.is_file() and sha256_file(path) == teacher["checkpoint_sha256"]:
            weights = weights_sha256(load_checkpoint(path))
        labels = (teacher.get("labeled_tokens") or {}).get("sha256")
        teachers[name] = {"weights": weights or f"file {teacher['checkpoint_sha256']}",
                          "labelled_frames": labels}  # fmt: skip
    contract = json.dumps(store.contract.to_dict(), sort_keys=True).encode()
    return {
        "teachers": teachers,
        "frames": made.get("frame_tokens_sha256"),
        "codecs": {f.name: f.codec for f in store.contract.fields},
        "contract_sha256": hashlib.sha256(contract).hexdigest(),
    }


def store_read_by(folder: Path, url: str) -> bool:
    """Whether a finished run in ``folder`` that did not record its store can only have read
    the store now at ``url``: that store was finalized (and a finalized store does not change;
    a repair finalizes it again, later) before the run wrote its resolved config."""
    import datetime as dt

    from bevkd.storage.reader import open_store

    finalized = open_store(url).attrs.get("finalized")
    config = folder / "config.yaml"
    if not isinstance(finalized, dict) or not config.is_file():
        return False
    at = dt.datetime.fromisoformat(finalized["at"]).timestamp()
    return at <= config.stat().st_mtime


def store_matches(entry: dict[str, Any], identity: dict[str, Any] | None) -> bool:
    """Whether a recorded run learnt from the store ``identity`` describes (True for an arm
    that reads no teacher field: ``identity`` None). A record without its store does not
    match: which store it read is unknown (:func:`store_read_by` may settle it)."""
    return identity is None or entry.get("store") == identity


def code_mark(code: dict[str, Any]) -> dict[str, Any] | None:
    """None when ``code`` is this commit's clean tree; else ``{"commit", "dirty"}`` of the
    code that made the result (a report flags it)."""
    if code.get("commit") == code_version()["commit"] and not code.get("dirty", True):
        return None
    return {"commit": code.get("commit", "unknown"), "dirty": bool(code.get("dirty", True))}


def dagger(runs: Iterable[dict[str, Any]]) -> str:
    """``†`` when any of ``runs`` (evaluations from ``arm_metrics``) is marked, else ``""``."""
    return "†" if any("reused" in run for run in runs) else ""


def footnote(runs: Iterable[dict[str, Any]]) -> list[str]:
    """The footnote for the † marks: which code made the marked results; [] when none."""
    marks = sorted({(r["reused"]["commit"], r["reused"]["dirty"]) for r in runs if "reused" in r})
    if not marks:
        return []
    made = ", ".join(f"{c[:10]}{' with uncommitted changes' if d else ''}" for c, d in marks)
    # The report's own commit is not named: a block regenerated from the same runs must not
    # change with every commit that follows (each run's ledger entry names its own code).
    return [
        f"† Made by other code than the report's: {made} (benchmarks/runs/ has each run's). "
        "The benchmark's `--fresh` trains them again."
    ]
