"""The import table of docs/design.md (section "Layout", from DESIGN.md's with the eval/ and
viz/ folders added), enforced by reading the source.

Every ``.py`` file of the eight package folders is parsed with :mod:`ast`; every import in it
counts, wherever it sits: module level, inside a function (a lazy import is still a
dependency), under ``if TYPE_CHECKING:``. Each import of a bevkd module (``bevkd.<folder>...``,
``from bevkd import <folder>`` or a relative import) is checked against :data:`TABLE`, and
each third-party import against the row's forbidden packages and the spconv rule.

How the table's words are read here:

- **pipeline leaves** are ``pipeline/geometry.py``, ``config.py``, ``provenance.py`` and
  ``errors.py``. Any folder may import them. They import no other bevkd folder (only each
  other), and neither click nor torch: storage may import any leaf, and storage must stay free
  of both, so a leaf that pulled them in would break storage's row by the back door.
- **the top of pipeline** is every other module of ``pipeline/`` (``cli.py``, ``commands/``,
  ``options.py``, ``cluster.py``, ``distributed.py``). It may import everything, but stages
  only inside a function (each command imports its stage when it runs), so ``bevkd --help``
  and importing the geometry never drag in a stage.
- **storage (reader side)**, what datasets may import: the modules a consumer needs to open
  and read a store (:data:`STORAGE_READER_SIDE`). The write side (writer, fastwrite,
  finalize, stats, copy, verify, info, show, testing) is for stages and the CLI.
- **datasets' record types**, what models and distill may import: the typed records at the
  dataset boundary, ``datasets/frame.py`` (``Frame``, ``Sample``, ``Batch``, ``collate``) and
  ``datasets/student_batch.py`` (``StudentBatch``, ``Targets``). Not the readers, the
  augmentation or the loaders.
- **models' record types**, what eval may import of models: ``models/outputs.py``
  (``Detections``, ``TeacherOutput``), the networks' typed outputs. A metric scores detections;
  it never builds or runs a network (``stages/predict.py`` does, and hands the detections on).
- **eval/ and viz/** are leaf-ish folders that the steps and the CLI import, and that never
  import stages or the CLI; the top of pipeline imports them only inside a function, like
  stages, so ``bevkd --help`` never loads a metric's scipy, shapely or devkit.
- **stages/ holds steps only**: every module of ``stages/`` is a step (:data:`STAGE_STEPS`,
  each with its entry point) or a helper that another module of stages imports
  (:data:`STAGE_HELPERS`); a metric or a figure goes to eval/ or viz/.
- **spconv (teacher files only, lazily)**: only the files of :data:`SPCONV_FILES` (the LiDAR
  teacher's voxel encoder and its CPU fallback) import spconv. "Lazily" is judged from the
  outside: a module that imports spconv at module level (``sparse_encoder.py``) may itself be
  imported only inside a function, so importing any other module never loads spconv
  (``tests/test_import_hygiene.py`` checks the same thing at run time).

``benchmarks/`` and ``tests/`` may import everything and are not checked; a new top-level
folder with Python in it fails :func:`test_every_folder_has_a_row` until it gets a row.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PIPELINE_LEAVES = ("pipeline.geometry", "pipeline.config", "pipeline.provenance", "pipeline.errors")

# What a consumer needs to open and read a store: the contract (schema, fields), the reader
# and its chunk decoding (codecs, layout, fastread), URLs (remote), and the BEV augmentation
# of cached fields (augment).
STORAGE_READER_SIDE = (
    "storage.schema",
    "storage.fields",
    "storage.reader",
    "storage.codecs",
    "storage.layout",
    "storage.fastread",
    "storage.remote",
    "storage.retry",
    "storage.augment",
)

# The typed records at the dataset boundary (DESIGN.md: Frame, StudentBatch).
RECORD_TYPES = ("datasets.frame", "datasets.student_batch")

# The networks' typed outputs (Detections, TeacherOutput): what eval may import of models.
MODEL_RECORD_TYPES = ("models.outputs",)


@dataclass(frozen=True)
class Row:
    """One row of docs/design.md's table, as this test enforces it."""

    # bevkd modules the folder may import, without the ``bevkd.`` prefix; an entry covers its
    # submodules, "*" covers everything. Each row names its own folder (pipeline's leaves
    # name only the leaves: a leaf importing pipeline.cluster is as wrong as storage doing it).
    may_import: tuple[str, ...]
    # docs/design.md's words for the row, quoted in every message.
    design: str
    # bevkd modules it may import only inside a function.
    lazy_only: tuple[str, ...] = ()
    # third-party packages it must not import -> why.
    forbidden: tuple[tuple[str, str], ...] = ()
    # its files that may import spconv (every other file may not).
    spconv_files: tuple[str, ...] = ()


# docs/design.md's import table, row by row. Keyed by importer group (see group_of).
# No row is looser than the table: where the code broke the table, the code was changed.
TABLE: dict[str, Row] = {
    "pipeline (leaf)": Row(
        # Leaves may import each other (config uses geometry's grid): "no bevkd folder"
        # means no folder other than these leaves.
        may_import=PIPELINE_LEAVES,
        design="pipeline leaves (geometry, config, provenance, errors) import no bevkd folder "
        "and no click",
        forbidden=(
            ("click", "pipeline leaves import no click (any folder may import them)"),
            # Not in the table's words, but implied: storage may import any leaf, and
            # storage must not get torch.
            ("torch", "pipeline leaves import no torch (storage imports them: no torch there)"),
        ),
    ),
    "pipeline (top)": Row(
        may_import=("*",),
        design="pipeline/ (cli, commands, options, cluster, distributed): everything, "
        "stages, eval and viz only inside each command",
        lazy_only=("stages", "eval", "viz"),
    ),
    "stages": Row(
        may_import=(
            "stages",
            "models",
            "datasets",
            "distill",
            "storage",
            "eval",
            "viz",
            *PIPELINE_LEAVES,
            "pipeline.cluster",
            "pipeline.distributed",
        ),
        design="stages/ may import models, datasets, distill, storage, eval, viz, pipeline "
        "leaves, pipeline.cluster/distributed",
    ),
    "eval": Row(
        may_import=(
            "eval",
            "datasets",
            *MODEL_RECORD_TYPES,
            *STORAGE_READER_SIDE,
            *PIPELINE_LEAVES,
        ),
        design="eval/ may import numpy, torch, scipy, shapely, devkit, datasets, models' record "
        "types (outputs), storage (reader side), pipeline leaves; never stages or the CLI",
        forbidden=(("click", "eval/: no click (the CLI lives in pipeline/)"),),
    ),
    "viz": Row(
        # storage.show draws a store's cached boxes; the detection figures reuse its drawing.
        may_import=("viz", "datasets", *STORAGE_READER_SIDE, "storage.show", *PIPELINE_LEAVES),
        design="viz/ may import numpy, matplotlib, datasets, storage (reader side, show), "
        "pipeline leaves; never stages or the CLI",
        forbidden=(("click", "viz/: no click (the CLI lives in pipeline/)"),),
    ),
    "storage": Row(
        may_import=("storage", *PIPELINE_LEAVES),
        design="storage/ may import numpy, zarr, numcodecs, fsspec, pipeline leaves "
        "(no torch, no click)",
        forbidden=(
            ("torch", "storage/: no torch (the store stays numpy + zarr + fsspec)"),
            ("click", "storage/: no click (the CLI lives in pipeline/)"),
        ),
    ),
    "datasets": Row(
        may_import=("datasets", *STORAGE_READER_SIDE, *PIPELINE_LEAVES),
        design="datasets/ may import numpy, torch, devkit, storage (reader side), pipeline leaves",
    ),
    "models": Row(
        may_import=("models", *RECORD_TYPES, *PIPELINE_LEAVES),
        design="models/ may import torch, pipeline leaves, datasets' record types "
        "(frame, student_batch); spconv (teacher files only, lazily)",
        # the LiDAR teacher's voxel encoder and its CPU fallback
        spconv_files=(
            "models/sparse_encoder.py",
            "models/centerpoint_sparse.py",
            "models/spconv_cpu.py",
        ),
    ),
    "distill": Row(
        may_import=("distill", "models", *RECORD_TYPES, *PIPELINE_LEAVES),
        design="distill/ may import torch, models, datasets' record types "
        "(frame, student_batch), pipeline leaves",
    ),
}

SPCONV_FILES = tuple(f for row in TABLE.values() for f in row.spconv_files)

# stages/ holds the steps only: module -> its entry point (what the command or a step runs)...
STAGE_STEPS = {
    "make_demo_data": "run",
    "train_teacher": "run",
    "cache_teacher": "run",
    "train_student": "run",
    "import_teacher": "run",
    "demo": "run_demo",
    "predict": "evaluate_model",  # `bevkd evaluate --checkpoint`, the training steps' last act
}
# ... and the helpers of those steps -> the step they serve. Each is imported by another module
# of stages; what a step merely calls (a metric, a figure) has its own folder.
STAGE_HELPERS = {
    "cache_plan": "cache_teacher",
    "cache_resume": "cache_teacher",
    "teacher_runner": "cache_teacher",
    "teacher_checks": "cache_teacher",
    "custom_teacher": "cache_teacher",
    "loop": "train_teacher, train_student",
    "student_contract": "train_student",
    "online_teacher": "train_student",
    "demo_students": "demo",
    "run_ledger": "demo",
}
SPCONV_PACKAGES = ("spconv", "cumm")  # cumm is spconv's runtime

# Every top-level folder holding Python, and whether this test checks it.
FOLDERS = {
    "pipeline": True,
    "stages": True,
    "storage": True,
    "datasets": True,
    "models": True,
    "distill": True,
    "eval": True,
    "viz": True,
    "benchmarks": False,  # everything
    "tests": False,  # everything
}
IGNORED_TOP = {".venv", "work", "build", "dist"}


@dataclass(frozen=True)
class Import:
    line: int
    text: str  # the import as written, for the message
    target: str  # bevkd module without the prefix ("storage.reader"), or a third-party name
    internal: bool
    lazy: bool  # inside a function


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    text: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: `{self.text}` breaks: {self.rule}"


def module_name(relpath: str) -> str:
    """``storage/reader.py`` -> ``storage.reader``; ``pipeline/commands/__init__.py`` ->
    ``pipeline.commands``."""
    parts = relpath[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def group_of(relpath: str) -> str:
    folder = relpath.split("/")[0]
    if folder == "pipeline":
        return "pipeline (leaf)" if module_name(relpath) in PIPELINE_LEAVES else "pipeline (top)"
    return folder


def _is_module(name: str) -> bool:
    """Whether ``name`` (without ``bevkd.``) is a module or package of the repo."""
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(relpath: str, source: str) -> list[Import]:
    tree = ast.parse(source, filename=relpath)
    package = module_name(relpath).split(".")
    if not relpath.endswith("__init__.py"):
        package = package[:-1]
    found: list[Import] = []
    lines = source.splitlines()

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            text = None
            if isinstance(child, ast.Import | ast.ImportFrom):  # as written, on one line
                text = " ".join(" ".join(lines[child.lineno - 1 : child.end_lineno]).split())
            if isinstance(child, ast.Import):
                for alias in child.names:
                    name = alias.name
                    internal = name == "bevkd" or name.startswith("bevkd.")
                    target = name.removeprefix("bevkd").lstrip(".") if internal else name
                    found.append(Import(child.lineno, text or name, target, internal, lazy))
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against the file's package
                    base = package[: len(package) - (child.level - 1)]
                    module = ".".join([*base, *([child.module] if child.module else [])])
                    internal = True
                else:
                    module = child.module or ""
                    internal = module == "bevkd" or module.startswith("bevkd.")
                    if internal:
                        module = module.removeprefix("bevkd").lstrip(".")
                for alias in child.names:
                    target = module
                    if internal:  # `from bevkd.storage import layout` imports storage.layout
                        sub = f"{module}.{alias.name}" if module else alias.name
                        if _is_module(sub):
                            target = sub
                    found.append(Import(child.lineno, text or module, target, internal, lazy))
            visit(child, inner)

    visit(tree, lazy=False)
    return found


def _allowed(target: str, entries: tuple[str, ...]) -> bool:
    return any(e == "*" or target == e or target.startswith(e + ".") for e in entries)


def check_source(relpath: str, source: str, spconv_carriers: frozenset[str]) -> list[Violation]:
    """The table's violations in one file; ``relpath`` (e.g. ``storage/x.py``) decides its row.

    ``spconv_carriers``: bevkd modules that import spconv at module level (see the docstring).
    """
    group = group_of(relpath)
    row = TABLE[group]
    forbidden = dict(row.forbidden)
    out: list[Violation] = []
    for imp in _imports(relpath, source):

        def fail(rule: str, imp: Import = imp) -> None:
            out.append(Violation(relpath, imp.line, imp.text, rule))

        if imp.internal:
            if imp.target == "":
                fail(f"import bevkd's modules by name; {row.design}")
                continue
            if not _allowed(imp.target, row.may_import):
                fail(f"{group} may not import bevkd.{imp.target}; {row.design}")
            if not imp.lazy and _allowed(imp.target, row.lazy_only):
                fail(f"{group} imports bevkd.{imp.target} only inside a function; {row.design}")
            if not imp.lazy and imp.target in spconv_carriers:
                fail(
                    f"bevkd.{imp.target} imports spconv at module level, so it may be imported "
                    "only inside a function (spconv: teacher files only, lazily)"
                )
        else:
            top = imp.target.split(".")[0]
            if top in forbidden:
                fail(forbidden[top])
            if top in SPCONV_PACKAGES and relpath not in SPCONV_FILES:
                fail(f"{top}: only {', '.join(SPCONV_FILES)} import spconv (teacher files only)")
    return list(dict.fromkeys(out))  # `from m import a, b` is one violation, not two


def python_files() -> list[str]:
    return sorted(
        p.relative_to(ROOT).as_posix()
        for folder, checked in FOLDERS.items()
        if checked
        for p in (ROOT / folder).rglob("*.py")
    )


def spconv_carriers(files: dict[str, str]) -> frozenset[str]:
    return frozenset(
        module_name(path)
        for path, source in files.items()
        if any(
            not imp.internal and not imp.lazy and imp.target.split(".")[0] in SPCONV_PACKAGES
            for imp in _imports(path, source)
        )
    )


def check_repo() -> list[Violation]:
    files = {path: (ROOT / path).read_text() for path in python_files()}
    carriers = spconv_carriers(files)
    return [v for path, source in files.items() for v in check_source(path, source, carriers)]


# ---- the repository keeps the table -------------------------------------------------------


def test_the_code_keeps_designs_import_table() -> None:
    violations = check_repo()
    assert not violations, "imports that break docs/design.md's table:\n" + "\n".join(
        map(str, violations)
    )


def test_every_folder_has_a_row() -> None:
    with_python = {
        d.name
        for d in ROOT.iterdir()
        if d.is_dir()
        and d.name not in IGNORED_TOP
        and not d.name.startswith(".")
        and next(d.rglob("*.py"), None) is not None
    }
    assert with_python <= set(FOLDERS), (
        f"folders missing from FOLDERS: {with_python - set(FOLDERS)}"
    )
    checked = {folder for folder, on in FOLDERS.items() if on}
    assert checked == {group.split()[0] for group in TABLE}


def test_the_table_names_real_modules() -> None:
    named = {e for row in TABLE.values() for e in (*row.may_import, *row.lazy_only) if e != "*"}
    missing = sorted(name for name in named if not _is_module(name))
    assert not missing, f"the table names modules that do not exist: {missing}"
    assert all((ROOT / path).is_file() for path in SPCONV_FILES)


def test_stages_holds_steps_and_their_helpers_only() -> None:
    files = {
        p.relative_to(ROOT).as_posix(): p.read_text()
        for p in (ROOT / "stages").rglob("*.py")
        if p.name != "__init__.py"
    }
    found = {module_name(path).removeprefix("stages.") for path in files}
    listed = set(STAGE_STEPS) | set(STAGE_HELPERS)
    assert not found - listed, (
        f"stages/ holds modules that are neither a step nor a step's helper: "
        f"{sorted(found - listed)}; a metric goes to eval/, a figure to viz/, or list it in "
        "STAGE_STEPS / STAGE_HELPERS"
    )
    assert not listed - found, f"listed but not in stages/: {sorted(listed - found)}"
    for step, entry in STAGE_STEPS.items():
        tree = ast.parse(files[f"stages/{step}.py"])
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert entry in defined, f"stages/{step}.py: no {entry}(), the step's entry point"
    imported = {
        imp.target.removeprefix("stages.")
        for path, source in files.items()
        for imp in _imports(path, source)
        if imp.internal and imp.target.startswith("stages.") and imp.target != module_name(path)
    }
    unused = sorted(set(STAGE_HELPERS) - imported)
    assert not unused, f"helpers no module of stages/ imports (not a step's helper): {unused}"


def test_the_spconv_carrier_is_seen() -> None:
    """The carrier rule is live: sparse_encoder imports spconv at module level today."""
    files = {path: (ROOT / path).read_text() for path in python_files()}
    assert "models.sparse_encoder" in spconv_carriers(files)


# ---- the checker fails on violating imports ----------------------------------------------


def _messages(relpath: str, source: str, carriers: frozenset[str] = frozenset()) -> list[str]:
    return [str(v) for v in check_source(relpath, textwrap.dedent(source), carriers)]


def test_a_storage_module_importing_pipeline_cluster_fails() -> None:
    messages = _messages(
        "storage/example.py", "import numpy\nfrom bevkd.pipeline.cluster import io_threads\n"
    )
    assert len(messages) == 1
    message = messages[0]
    assert message.startswith(
        "storage/example.py:2: `from bevkd.pipeline.cluster import io_threads`"
    )
    assert "storage may not import bevkd.pipeline.cluster" in message
    assert "pipeline leaves (no torch, no click)" in message


@pytest.mark.parametrize(
    ("relpath", "source", "expected"),
    [
        # lazy imports count
        (
            "storage/x.py",
            "def f():\n    import torch\n",
            "storage/x.py:2: `import torch` breaks: storage/: no torch",
        ),
        ("storage/x.py", "import click\n", "no click"),
        # so do imports for type checking only
        (
            "models/x.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from bevkd.datasets.dataset import FrameDataset\n",
            "models/x.py:3: `from bevkd.datasets.dataset import FrameDataset` breaks",
        ),
        # a relative import resolves to bevkd.stages
        ("storage/x.py", "from ..stages import demo\n", "may not import bevkd.stages.demo"),
        ("pipeline/errors.py", "import click\n", "pipeline leaves import no click"),
        (
            "pipeline/config.py",
            "from bevkd.pipeline.cluster import io_threads\n",
            "pipeline (leaf) may not import bevkd.pipeline.cluster",
        ),
        (
            "pipeline/geometry.py",
            "def f():\n    from bevkd.storage import schema\n",
            "may not import bevkd.storage.schema",
        ),
        (
            "models/lidar_teacher.py",
            "from bevkd.datasets.dataset import FrameDataset\n",
            "datasets' record types",
        ),
        (
            "models/x.py",
            "from bevkd.storage.schema import StoreContract\n",
            "models may not import bevkd.storage.schema",
        ),
        (
            "distill/x.py",
            "from bevkd.storage.fields import teacher_writing\n",
            "distill may not import bevkd.storage.fields",
        ),
        (
            "datasets/x.py",
            "from bevkd.storage.writer import StoreWriter\n",
            "storage (reader side)",
        ),
        ("datasets/x.py", "from bevkd import models\n", "datasets may not import bevkd.models"),
        (
            "stages/x.py",
            "from bevkd.pipeline.options import resolve\n",
            "stages may not import bevkd.pipeline.options",
        ),
        (
            "pipeline/commands/x.py",
            "from bevkd.stages.demo import run_demo\n",
            "only inside a function",
        ),
        ("stages/x.py", "import spconv.pytorch as spconv\n", "teacher files only"),
        # eval/ and viz/ never import the steps or the CLI
        (
            "eval/x.py",
            "from bevkd.stages.predict import predict\n",
            "eval may not import bevkd.stages",
        ),
        (
            "eval/x.py",
            "def f():\n    from bevkd.pipeline.options import resolve\n",
            "eval may not import bevkd.pipeline.options",
        ),
        (
            "eval/x.py",
            "from bevkd.models.builders import build_model\n",
            "models' record types (outputs)",
        ),
        ("eval/x.py", "from bevkd.storage.writer import StoreWriter\n", "storage (reader side)"),
        ("eval/x.py", "import click\n", "eval/: no click"),
        ("viz/x.py", "from bevkd.stages import loop\n", "viz may not import bevkd.stages.loop"),
        ("viz/x.py", "from bevkd.eval.kitti_ap import run\n", "viz may not import bevkd.eval"),
        ("storage/x.py", "from bevkd.eval import verdicts\n", "storage may not import bevkd.eval"),
        ("datasets/x.py", "from bevkd.viz.draw import draw_bev\n", "datasets may not import"),
        (
            "pipeline/commands/x.py",
            "from bevkd.eval.kitti_ap import format_table\n",
            "only inside a function",
        ),
        ("models/head.py", "def f():\n    import spconv\n", "teacher files only"),
        (
            "models/builders.py",
            "from bevkd.models.sparse_encoder import SparseEncoder\n",
            "only inside a function",
        ),
    ],
)
def test_the_checker_fails_on(relpath: str, source: str, expected: str) -> None:
    messages = _messages(relpath, source, frozenset({"models.sparse_encoder"}))
    assert len(messages) == 1, messages
    assert expected in messages[0], messages[0]


@pytest.mark.parametrize(
    ("relpath", "source"),
    [
        ("storage/x.py", "import numpy, zarr\nfrom bevkd.pipeline.errors import BevkdError\n"),
        ("datasets/x.py", "import torch\nfrom bevkd.storage.reader import open_store\n"),
        (
            "models/x.py",
            "from bevkd.datasets.frame import Batch\nfrom bevkd.pipeline.config import Config\n",
        ),
        (
            "distill/x.py",
            "from bevkd.models.outputs import Detections\nfrom bevkd.datasets.student_batch import StudentBatch\n",
        ),
        (
            "stages/x.py",
            "from bevkd.pipeline.cluster import io_threads\nfrom bevkd.storage.writer import StoreWriter\n",
        ),
        ("pipeline/config.py", "from bevkd.pipeline.geometry import BEVGrid\n"),
        (
            "pipeline/commands/x.py",
            "import click\ndef run():\n    from bevkd.stages.demo import run_demo\n",
        ),
        ("models/sparse_encoder.py", "import spconv.pytorch as spconv\n"),
        (
            "eval/x.py",
            "import torch\nfrom bevkd.datasets.kitti import kitti_roots\n"
            "from bevkd.models.outputs import Detections\nfrom bevkd.storage.reader import open_store\n",
        ),
        ("viz/x.py", "from bevkd.storage.show import draw_bev_boxes\n"),
        (
            "stages/x.py",
            "from bevkd.eval.detections import evaluate_detections\nfrom bevkd.viz import plots\n",
        ),
        ("pipeline/commands/x.py", "def run():\n    from bevkd.eval import store_boxes\n"),
        (
            "models/builders.py",
            "def f():\n    from bevkd.models.sparse_encoder import SparseEncoder\n",
        ),
    ],
)
def test_the_checker_passes(relpath: str, source: str) -> None:
    assert _messages(relpath, source, frozenset({"models.sparse_encoder"})) == []
