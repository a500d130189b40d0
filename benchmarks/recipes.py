"""The results table: every recipe against the baseline, with and without the unlabelled frames,
cached against online targets, over 5 seeds (the arms the headline rests on) or 3 (the rest);
and how far the store compresses before a student notices.

    .venv/bin/python benchmarks/recipes.py [--seeds 0 1 2] [--headline-seeds 0 1 2 3 4]
                                           [--parallel 2] [--part table codecs]
                                           [--report-only] [--fresh]

On the demo world (``make demo``'s: 72 labelled train frames, 72 unlabelled sweeps, 24 val
frames), with the demo's three teachers and store, built here if missing (``cache-teacher
--build-missing``: the world, the LiDAR, fusion and label-encoder teachers, the store).

**Table** (``--part table``), each arm a real ``bevkd train-student`` run of
``configs/demo/student_<recipe>.yaml`` under ``work/demo/results/<arm>_seed<n>``:

- ``baseline``: GT only;
- ``cmkd``, ``focal``, ``simdistill``, ``labeldistill``: on the labelled frames, and with the
  unlabelled sweeps added (``student.unlabeled=true``);
- ``cmkd online``: ``cmkd`` with the teacher run inside every step (``train.targets=online``),
  the cached-against-online comparison.

Every arm trains the same number of optimizer steps (:data:`STEPS` of batch 4): 8 epochs over
the 72 labelled frames, 4 over the 144 frames with the sweeps. The unlabelled arms see more
frames, not more steps.

**Codecs** (``--part codecs``): the demo LiDAR teacher cached again into stores that differ
only in their codecs (:data:`CODECS`: lossless fp32, the default uint8, 4-bit, and a per-frame
PCA of ``lidar_bev`` to 8 components at 4 bits), and ``cmkd`` trained on each. The
uint8 point is the table's ``cmkd`` arm: the same teacher values (checked here) and codec.
KB/frame counts the fields ``cmkd`` reads (``lidar_bev``, ``heatmap``, ``box_regression``,
``boxes``), measured on disk.

**Seeds**: ``--headline-seeds`` (5) for the arms the headline claims rest on (:data:`HEADLINE`:
``baseline``, ``cmkd`` and every codec arm), ``--seeds`` (3) for the rest.

**Verdicts** (:mod:`bevkd.eval.verdicts`): each directional claim is Welch's t-test on the
seeds, Holm-corrected over the family of its table (the directions table; the codec table),
printed with its p's and n's; a difference the test cannot resolve is "not distinguishable at
n = a/b", with the smallest difference it would have detected.

Resumable: a finished arm (its ``eval/metrics.json``, or its entry in the run ledger
``benchmarks/runs/``, which git keeps) is not run again, an interrupted one resumes from its
``last.pt``, a finished store is not cached again. A result made by other code than this
commit's clean tree is reused but marked † in the tables (``--fresh`` trains it again). Writes
the ``recipes`` and ``codecs`` blocks of ``docs/results.md`` and their figures
(``docs/results_*.png``), generated from the arms' own evaluations, and prints the same text.

Here: building the stores, running the arms, and ``main``. The arms (configs, overrides, seeds,
folders) are recipe_arms.py's; the blocks are written by recipes_report.py, the figures drawn
by recipe_figures.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from doc_blocks import write_block
from recipe_arms import (
    CODECS,
    DATA,
    HEADLINE_SEEDS,
    OUT,
    SEEDS,
    STORE,
    codec_arms,
    codec_store,
    finalized,
    folder,
    seeds_for,
    table_arms,
)
from recipe_figures import plot_codecs, plot_loss_curves, plot_recipes
from recipes_report import codec_block, collect, readme_block, recipe_block

from bevkd.stages.demo_students import Arm, train_arm

DOCS = Path("docs")


def build_main_store() -> None:
    """The demo world, its three teachers and store, unless the store is finished."""
    if finalized(STORE):
        return
    print("[results] building the demo world, its teachers and store", flush=True)
    _cli("cache-teacher", "--config", "configs/demo/cache.yaml", "--build-missing")


def build_codec_stores() -> None:
    """The demo LiDAR teacher cached once per codec choice (train and val frames)."""
    for name, choice in CODECS.items():
        url = codec_store(name)
        if name == "uint8" or finalized(url):
            continue
        pairs = ", ".join(f"[{field}, {codec}]" for field, codec in choice.items())
        print(f"[results] caching the LiDAR teacher into {url} ({name})", flush=True)
        _cli("cache-teacher", "--config", "configs/demo/cache.yaml",
             "--set", "cache.teachers=[lidar]", "--set", "cache.lidar_bev_scales=[1]",
             "--set", "cache.splits=[train, val]", "--set", f"store.url={url}",
             "--set", f"store.codecs=[{pairs}]")  # fmt: skip
    check_same_teacher()


def check_same_teacher(frames: int = 4) -> None:
    """The codec stores hold the main store's LiDAR teacher values: its fp32 store's
    ``lidar_bev`` equals the main store's within the main store's recorded codec error (so the
    table's ``cmkd`` arm is the codec curve's uint8 point). Raises if not."""
    import numpy as np

    from bevkd.storage.reader import open_store

    main, lossless = open_store(STORE), open_store(codec_store("fp32"))
    for token in lossless.tokens[:frames]:
        got = main.read_frame(main.index_of(token))
        want = lossless.read_frame(lossless.index_of(token))
        for field in ("lidar_bev", "heatmap", "box_regression"):
            bound = main.attrs["codec_error"][field]["max_abs"] * (1 + 1e-4) + 1e-6
            gap = float(np.abs(got[field] - want[field]).max())
            if gap > bound:
                sys.exit(
                    f"[results] {codec_store('fp32')} and {STORE} disagree on {field} of frame "
                    f"{token} by {gap:.3g} (> the uint8 codec's {bound:.3g}): not the same "
                    "teacher values; remove work/demo/results/stores and rerun"
                )


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "bevkd.pipeline.cli", *args], check=True)


def run(arms: dict[str, tuple[str, list[str]]], seeds: list[int], headline_seeds: list[int],
        parallel: int, fresh: bool = False) -> None:  # fmt: skip
    """Every (arm, seed) (:func:`seeds_for`), seed by seed, ``parallel`` at once; a failed arm
    stops the run. ``fresh``: results marked as made by other code are trained again."""
    jobs = [
        (Arm(f"{name} (seed {seed})", config, folder(name, seed)), [*sets, f"train.seed={seed}"])
        for seed in sorted({*seeds, *headline_seeds})
        for name, (config, sets) in arms.items()
        if seed in seeds_for(name, seeds, headline_seeds)
    ]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(train_arm, arm, OUT, STORE, DATA, tuple(sets), fresh=fresh)
                   for arm, sets in jobs]  # fmt: skip
        for future in futures:
            future.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS,
                        help="seeds of the arms the headline does not rest on")  # fmt: skip
    parser.add_argument("--headline-seeds", nargs="+", type=int, default=HEADLINE_SEEDS,
                        help="seeds of baseline, cmkd and the codec arms")  # fmt: skip
    parser.add_argument("--parallel", type=int, default=2, help="arms at once (1 thread each)")
    parser.add_argument("--part", nargs="+", choices=("table", "codecs"),
                        default=["table", "codecs"])  # fmt: skip
    parser.add_argument("--report-only", action="store_true",
                        help="write the blocks from the arms already evaluated; train nothing")  # fmt: skip
    parser.add_argument("--fresh", action="store_true",
                        help="train again the arms whose result other code made (marked †)")  # fmt: skip
    args = parser.parse_args()
    started = time.perf_counter()
    table, codec = table_arms(), codec_arms()
    if not args.report_only:
        build_main_store()
        if "codecs" in args.part:
            build_codec_stores()
        arms = {**(table if "table" in args.part else {}),
                **({"cmkd": table["cmkd"], **codec} if "codecs" in args.part else {})}  # fmt: skip
        run(arms, args.seeds, args.headline_seeds, args.parallel, args.fresh)
    text = ""
    by_arm = collect(list(table), args.seeds, args.headline_seeds)
    if by_arm:
        DOCS.mkdir(exist_ok=True)
        plot_recipes(by_arm, DOCS / "results_recipes.png")
        plot_loss_curves(list(table), DOCS / "results_loss_curves.png")
        block = recipe_block(by_arm, args.seeds, args.headline_seeds)
        write_block(DOCS / "results.md", "recipes", block)
        write_block(Path("README.md"), "recipes-readme", readme_block(by_arm))
        text += block
    by_codec = collect(["cmkd", *codec], args.seeds, args.headline_seeds)
    if any(name in by_codec for name in codec):
        plot_codecs(by_codec, DOCS / "results_codecs.png")
        block = codec_block(by_codec, args.seeds, args.headline_seeds)
        write_block(DOCS / "results.md", "codecs", block)
        text += "\n" + block
    print(text or "no arm evaluated yet")
    print(f"[results] {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
