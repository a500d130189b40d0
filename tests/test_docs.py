"""The README and the manual (docs/): links resolve, generated blocks are current, and every
command a newcomer copies names commands and flags that exist.

Generated blocks, and how each is checked here:

- re-rendered from what the repository holds and compared with the page: ``recipe-reference``
  (docs/recipes.md, from bevkd.distill), ``store-load`` (docs/reliability.md, from
  benchmarks/runs/store_load.json), ``waymo-demo`` (docs/waymo.md, from
  benchmarks/runs/waymo_demo.json), ``withdrawn`` (docs/results.md, from the old page in git),
  and ``demo-readme`` (README.md) when work/demo/results.md exists;
- checked for form (markers paired, not empty, a benchmark script that writes the block) and,
  for the README's summaries, against the full blocks they summarise: the blocks whose runs
  need the stores and checkpoints under work/ (recipes, codecs, few-labels, kitti-results,
  stage-two and the performance blocks), which a fresh clone does not have.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from doc_checks import REPO, bad_commands, broken_links, pages, rel
from stage_helpers import benchmark_module

from bevkd.pipeline.cli import cli

README = REPO / "README.md"
DOCS = REPO / "docs"


@pytest.fixture(scope="module")
def doc_blocks() -> Iterator[Any]:
    yield from benchmark_module("doc_blocks")


def page_blocks(doc_blocks: Any) -> dict[tuple[str, str], str]:
    """``(page, block name) -> body`` of every generated block of the README and docs/."""
    return {
        (rel(page), name): body
        for page in pages()
        for name, body in doc_blocks.blocks(page.read_text(), rel(page)).items()
    }


# ------------------------------------------------------------------------------------------
# Shape of the front page and the manual
# ------------------------------------------------------------------------------------------


def test_the_readme_is_a_front_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    assert "```mermaid" in text  # the pipeline picture
    for heading in (
        "## Two commands on a fresh machine",
        "## Use it on real data",
        "## The manual",
    ):
        assert heading in text


def test_every_page_is_in_the_readme_table_the_index_and_the_nav() -> None:
    readme, index = README.read_text(), (DOCS / "index.md").read_text()
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    in_nav = set(re.findall(r"[\w-]+\.md", str(nav)))
    missing = []
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "index.md":
            if f"](docs/{page.name})" not in readme:
                missing.append(f"{page.name}: no row in the README's manual table")
            if f"]({page.name})" not in index:
                missing.append(f"{page.name}: no row in docs/index.md")
        if page.name not in in_nav:
            missing.append(f"{page.name}: not in mkdocs.yml's nav")
    assert not missing, missing


# ------------------------------------------------------------------------------------------
# Links
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_every_link_between_the_pages_resolves(page: Path) -> None:
    assert not broken_links(page, page.read_text())


def test_the_link_check_finds_a_missing_page_and_a_missing_anchor() -> None:
    page = DOCS / "index.md"
    text = (
        "# T\n\n## A `code` heading: yes\n\n[ok](#a-code-heading-yes) [ok](store.md#layout)\n"
        "[gone](nowhere.md) [bad](store.md#no-such-heading) `[not a link](x.md)`\n"
        "```\n[in code](x.md)\n```\n[exists](waymo.md)\n"
    )
    problems = broken_links(page, text)
    assert len(problems) == 2, problems
    assert "docs/nowhere.md does not exist" in problems[0]
    assert "#no-such-heading" in problems[1]


# ------------------------------------------------------------------------------------------
# Generated blocks
# ------------------------------------------------------------------------------------------


def test_every_generated_block_is_well_formed_and_has_a_generator(doc_blocks: Any) -> None:
    found = page_blocks(doc_blocks)
    assert ("README.md", "demo-readme") in found and (
        "docs/recipes.md",
        "recipe-reference",
    ) in found
    sources = {p: p.read_text() for p in (REPO / "benchmarks").glob("*.py")}
    orphans = []
    for page, name in found:
        stem = name.rsplit("-", 1)[0]  # recipe_results.py writes "recipe-results" + "-unlabeled"
        writers = [p.name for p, s in sources.items() if f'"{name}"' in s or f'"{stem}" +' in s]
        if not writers:
            orphans.append(f"{page}: block '{name}' is written by no benchmarks/*.py")
    assert not orphans, orphans


def test_a_block_must_close(doc_blocks: Any) -> None:
    with pytest.raises(doc_blocks.BlockError, match="never closed"):
        doc_blocks.blocks("<!-- a:start -->\nx\n", "page")
    with pytest.raises(doc_blocks.BlockError, match="starts inside"):
        doc_blocks.blocks("<!-- a:start -->\n<!-- b:start -->\nx\n<!-- b:end -->\n", "page")
    assert doc_blocks.blocks("<!-- a:begin -->\nx\n<!-- a:end -->\n") == {"a": "x\n"}


def test_the_recipes_page_is_what_its_generator_writes(doc_blocks: Any) -> None:
    with benchmark_context("docs_recipes") as docs_recipes:
        body = docs_recipes.render()
    assert page_blocks(doc_blocks)[("docs/recipes.md", "recipe-reference")] == body, (
        "docs/recipes.md is stale: run .venv/bin/python benchmarks/docs_recipes.py"
    )


def test_the_recipes_check_mode_writes_nothing(tmp_path: Path) -> None:
    script = REPO / "benchmarks" / "docs_recipes.py"
    before = (DOCS / "recipes.md").read_text()
    ok = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "current" in ok.stdout
    assert (DOCS / "recipes.md").read_text() == before


def test_check_mode_reports_a_stale_block_and_leaves_it(doc_blocks: Any, tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# P\n\n<!-- b:start -->\nold\n<!-- b:end -->\nafter\n")
    assert not doc_blocks.write_or_check(page, "b", "new\n", check=True)
    assert "old" in page.read_text()
    assert not doc_blocks.write_or_check(page, "b", "new\n", check=False)
    assert page.read_text() == "# P\n\n<!-- b:start -->\nnew\n<!-- b:end -->\nafter\n"
    assert doc_blocks.write_or_check(page, "b", "new\n", check=True)
    with pytest.raises(doc_blocks.BlockError, match="no block 'c'"):
        doc_blocks.write_or_check(page, "c", "x\n", check=True)


def test_the_recipes_page_follows_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from bevkd.distill.cmkd import CMKD

    with benchmark_context("docs_recipes") as docs_recipes:
        monkeypatch.setitem(CMKD.DEFAULTS, "bev_weight", 51.0)
        text = docs_recipes.render()
    assert "| `distill.bev_weight` | 51 |" in text
    assert "| `distill.bev_weight` | 51 | 0.3 | - |" in text  # the side-by-side table


def test_the_store_load_block_is_what_its_saved_run_gives(doc_blocks: Any) -> None:
    import json

    raw = json.loads((REPO / "benchmarks" / "runs" / "store_load.json").read_text())
    with benchmark_context("store_load") as store_load:
        lines = store_load.report(raw["rows"], raw["frames"], raw["seconds"],
                                  raw.get("quick", False), raw["cores"])  # fmt: skip
    body = "\n".join([raw["command"], "", *lines]) + "\n"
    assert page_blocks(doc_blocks)[("docs/reliability.md", "store-load")] == body, (
        "run .venv/bin/python benchmarks/store_load.py --report-only"
    )


def test_the_waymo_demo_block_is_what_its_saved_run_gives(doc_blocks: Any) -> None:
    import json

    raw = json.loads((REPO / "benchmarks" / "runs" / "waymo_demo.json").read_text())
    with benchmark_context("waymo_demo") as waymo_demo:
        body = waymo_demo.render(raw) + "\n"
    assert page_blocks(doc_blocks)[("docs/waymo.md", "waymo-demo")] == body, (
        "run .venv/bin/python benchmarks/waymo_demo.py (make waymo-demo)"
    )


def test_the_withdrawn_block_is_what_its_generator_writes(doc_blocks: Any) -> None:
    commit = "fad7994"
    old = subprocess.run(["git", "show", f"{commit}:docs/results.md"], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    if old.returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone (a shallow checkout): {old.stderr}")
    with benchmark_context("rejudge") as rejudge:
        body = rejudge.report(old.stdout, commit)
    assert page_blocks(doc_blocks)[("docs/results.md", "withdrawn")] == body


def test_the_readme_demo_table_is_the_demos(doc_blocks: Any) -> None:
    body = page_blocks(doc_blocks)[("README.md", "demo-readme")]
    with benchmark_context("demo_readme") as demo_readme:
        if demo_readme.RESULTS.is_file():
            assert body == demo_readme.render(demo_readme.RESULTS.read_text()), (
                "run .venv/bin/python benchmarks/demo_readme.py"
            )
        else:  # a fresh clone: no demo has run, so the block says how to make it
            assert body == demo_readme.NOT_YET or demo_readme.HEADER in body.splitlines()


def test_the_demo_block_renders_the_demos_table() -> None:
    saved = (
        "# Demo\n\n| model | mAP | NDS | car AP |\n|---|---|---|---|\n| cmkd | 0.1 | 0.2 | 0.3 |\n"
    )
    with benchmark_context("demo_readme") as demo_readme:
        body = demo_readme.render(saved)
        with pytest.raises(ValueError, match="should start with"):
            demo_readme.render("# Demo\n\n| arm | x |\n")
    assert body.splitlines()[-3:] == saved.splitlines()[-3:]


SUMMARIES = {  # README block -> the docs/results.md block it summarises
    "few-labels-readme": "few-labels",
    "recipes-readme": "recipes",
}


@pytest.mark.parametrize("summary", SUMMARIES)
def test_a_readme_summary_agrees_with_its_full_block(doc_blocks: Any, summary: str) -> None:
    found = page_blocks(doc_blocks)
    short, full = found[("README.md", summary)], found[("docs/results.md", SUMMARIES[summary])]
    full_rows = [row_cells(line) for line in full.splitlines() if line.startswith("| ")]
    checked = 0
    for line in short.splitlines():
        if not line.startswith("| ") or line.startswith("| arm"):
            continue
        cells = row_cells(line)
        arm, seeds, car = cells[0], cells[-2], cells[-1]
        rows = [r for r in full_rows if r and r[0] == arm]
        assert rows, f"{summary}: arm '{arm}' is not in the {SUMMARIES[summary]} block"
        assert any(seeds in r and car in r for r in rows), f"{summary}: {arm}: {seeds}, {car}"
        checked += 1
    for verdict in re.findall(r"^- \*\*\w+:\*\* .*?: (\w+ \(Δ .*\))$", short, re.MULTILINE):
        assert verdict in full, f"{summary}: '{verdict}' is not in the full block"
        checked += 1
    assert checked >= 3


def row_cells(line: str) -> list[str]:
    """A markdown table row's cells, with the † of reused results dropped."""
    return [c.strip().replace("†", "") for c in line.strip().strip("|").split("|")]


@contextlib.contextmanager
def benchmark_context(name: str) -> Iterator[Any]:
    """``with benchmark_context("name") as module``: a benchmarks/ script as a module."""
    yield from benchmark_module(name)


# ------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_every_bevkd_command_and_flag_exists(page: Path) -> None:
    assert not bad_commands(page, page.read_text(), cli)


def test_the_command_check_reports_a_renamed_flag_and_command() -> None:
    """The mutation: a README block with one flag and one subcommand misspelt."""
    text = README.read_text()
    assert "--from openpcdet" in text
    mutated = text.replace("--from openpcdet", "--frm openpcdet", 1)
    mutated += (
        "\n```bash\nbevkd train-student --config F --build-misssing\nbevkd store verfy X\n```\n"
    )
    problems = bad_commands(README, mutated, cli)
    assert len(problems) == 3, problems
    assert "`bevkd teacher import` has no option --frm" in problems[0]
    assert "`bevkd train-student` has no option --build-misssing" in problems[1]
    assert "`bevkd store` has no command 'verfy'" in problems[2]


def test_renaming_a_cli_flag_fails_the_docs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mutation the other way round: the docs stay, the CLI renames --build-missing."""
    import click

    from bevkd.pipeline.commands import train_student

    option = next(p for p in train_student.command.params if "--build-missing" in p.opts)
    assert isinstance(option, click.Option)
    monkeypatch.setattr(option, "opts", ["--build-if-missing"])
    problems = [p for page in pages() for p in bad_commands(page, page.read_text(), cli)]
    assert problems and all("no option --build-missing" in p for p in problems), problems


def test_console_blocks_continuations_and_make_targets() -> None:
    text = (
        "```console\n$ bevkd demo --out w \\\n    --skip-students\nbevkd demo --nope (output)\n```\n"
        "```sh\n.venv/bin/bevkd evaluate --checkpoint x.pt --draw 2 && make no-such-target\n```\n"
        "```python\nbevkd --not-shell\n```\n"
    )
    problems = bad_commands(DOCS / "index.md", text, cli)
    assert problems == ["docs/index.md:7: the Makefile has no target 'no-such-target'"], problems


# ------------------------------------------------------------------------------------------
# The mkdocs build
# ------------------------------------------------------------------------------------------


def test_the_manual_builds_strict(tmp_path: Path) -> None:
    """(make setup installs the docs extra, so this runs wherever the suite runs.)"""
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "recipes" / "index.html").is_file()
