"""docs/recipes.md from the code: each recipe's terms, source and defaults.

    .venv/bin/python benchmarks/docs_recipes.py [--check]

Writes the ``recipe-reference`` block of docs/recipes.md from :mod:`bevkd.distill` itself:
for every recipe of ``RECIPES`` its module's docstring (the paper), its class docstring (the
terms and their formulas), its ``DEFAULTS`` and the source comment above them; then every
``distill.*`` key of ``DistillConfig`` with its default, range and comment. Nothing is copied
by hand, so the page cannot drift from the code. ``--check`` writes nothing and exits 1 if the
page would change (tests/test_docs.py runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_blocks import exit_code, write_or_check

if TYPE_CHECKING:
    from bevkd.distill.base import Recipe

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "recipes.md"
BLOCK = "recipe-reference"
GENERATOR = "benchmarks/docs_recipes.py"
# Sphinx roles in the docstrings (:func:`x`, :data:`~a.b.C`) become plain code spans.
ROLE = re.compile(r":(?:func|data|class|meth|mod|attr):`~?([^`]+)`")
# A wrapped docstring line that markdown would read as a list item or heading ("* N_pos ..."
# inside a formula); the docstrings' own bullets are "- ".
NOT_A_START = re.compile(r"^(?:[*+#]|\d+\.)\s")


def markdown(doc: str | None) -> str:
    """A reST-flavoured docstring as markdown: roles and ``literals`` as code spans, and list
    indentation doubled (Python-Markdown nests a list only at 4 spaces; GitHub takes both)."""
    text = inspect.cleandoc(doc or "")
    text = ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    text = text.replace("``", "`")
    lines: list[str] = []
    for line in text.splitlines():
        body = line.lstrip(" ")
        if lines and lines[-1] and NOT_A_START.match(body):
            lines[-1] = join(lines[-1], body)
            continue
        lines.append(" " * 2 * (len(line) - len(body)) + body if body else "")
    return "\n".join(lines)


def join(left: str, right: str) -> str:
    """Two pieces of one wrapped sentence (a path broken after its "/" stays whole)."""
    if not left:
        return right
    return left + right if left.endswith("/") else f"{left} {right}"


def source_comment(cls: type) -> str:
    """The comment lines right above ``DEFAULTS = ...`` in ``cls``'s own body: where its
    values come from. Empty when the class does not set DEFAULTS."""
    lines = inspect.getsource(cls).splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("DEFAULTS"):
            comment: list[str] = []
            for above in reversed(lines[:i]):
                if not above.strip().startswith("#"):
                    break
                comment.insert(0, above.strip().lstrip("#").strip())
            return functools.reduce(join, comment, "")
    return ""


def value_text(value: Any) -> str:
    """A config value as YAML would spell it."""
    if value is None:
        return "the recipe's"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return str(value)


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` of a config dataclass, from its source: the comment lines right
    above each field, then its trailing comment."""
    notes: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        found = re.match(r"    (\w+): [^=]+=", line)
        if found:
            trailing = line.partition("  # ")[2]
            notes[found.group(1)] = functools.reduce(join, [*pending, trailing.strip()], "").strip()
        pending = []
    return notes


def range_text(f: dataclasses.Field[Any]) -> str:
    """The field's declared range (``num(..., ge=...)``), or "-"."""
    limits = f.metadata.get("range")
    if limits is None:
        return "-"
    sample = f.default[0] if isinstance(f.default, tuple) and f.default else f.default
    integer = isinstance(sample, int) and not isinstance(sample, bool)
    return str(limits.describe(integer))


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def recipe_section(name: str, cls: type[Recipe]) -> list[str]:
    """One recipe: where it lives, its paper, its terms, its own defaults."""
    module = sys.modules[cls.__module__]
    path = Path(inspect.getfile(cls)).relative_to(REPO).as_posix()
    paper = markdown(module.__doc__).split("\n\n")[0].replace("\n", " ")
    lines = [
        f"## {name}",
        "",
        f"`{cls.__name__}` in `{path}`. {paper}",
        "",
        markdown(cls.__doc__),
        "",
    ]
    own = dict(cls.__dict__.get("DEFAULTS", {}))
    if own:
        lines += [f"Its defaults (`{cls.__name__}.DEFAULTS`, filled in where a config leaves the "
                  "key unset):", "", "| key | default |", "|---|---|"]  # fmt: skip
        lines += [f"| `distill.{k}` | {value_text(v)} |" for k, v in own.items()]
        if comment := source_comment(cls):
            lines += ["", f"Source: {markdown(comment)}"]
    else:
        lines.append(
            "No defaults of its own: its weights are the shared `distill.*` keys "
            "([the defaults](#the-defaults))."
        )
    return [*lines, ""]


def defaults_section(recipes: dict[str, type[Recipe]]) -> list[str]:
    """The weights each recipe owns, side by side, then every ``distill.*`` key."""
    from bevkd.pipeline.config import DistillConfig

    owners = {name: cls.DEFAULTS for name, cls in recipes.items() if cls.DEFAULTS}
    keys = sorted({k for d in owners.values() for k in d})
    lines = [
        "## The defaults",
        "",
        "Weights the recipes disagree on are left unset in `DistillConfig`; each recipe fills "
        "them with its own paper's value (`with_recipe_defaults`), and `bevkd config show "
        "--config <student config>` prints the resolved ones. A config that sets a key keeps "
        "its value; two combined recipes (`a+b`) with different defaults for a key the config "
        "leaves unset are an error naming both.",
        "",
        "| key | " + " | ".join(f"`{n}`" for n in owners) + " |",
        "|---|" + "---|" * len(owners),
    ]
    for key in keys:
        row = [value_text(d[key]) if key in d else "-" for d in owners.values()]
        lines.append(f"| `distill.{key}` | " + " | ".join(row) + " |")
    notes = field_comments(DistillConfig)
    lines += [
        "",
        "Every `distill.*` key (`DistillConfig` in `pipeline/config.py`), its default and valid "
        "range:",
        "",
        "| key | default | range | what |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(DistillConfig):
        lines.append(
            f"| `distill.{f.name}` | {cell(value_text(f.default))} | {cell(range_text(f))} | "
            f"{cell(notes.get(f.name, ''))} |"
        )
    return [*lines, ""]


def render() -> str:
    """The block's text."""
    from bevkd.distill import recipes as recipes_module
    from bevkd.distill.recipes import RECIPES, Combined

    lines = [
        f"Generated by `.venv/bin/python {GENERATOR}` from `distill/` and `pipeline/config.py`; "
        "edit the docstrings and `DEFAULTS` there, then rerun it.",
        "",
        "Recipes: " + ", ".join(f"[`{n}`](#{n})" for n in RECIPES) + ".",
        "",
    ]
    for name, cls in RECIPES.items():
        lines += recipe_section(name, cls)
    lines += [
        "## Combined recipes",
        "",
        markdown(recipes_module.__doc__).split("\n\n")[1].replace("\n", " "),
        "",
        markdown(Combined.__doc__),
        "",
    ]
    lines += defaults_section(dict(RECIPES))
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="report only: write nothing, exit 1 if docs/recipes.md would change")  # fmt: skip
    args = parser.parse_args()
    exit_code(write_or_check(PAGE, BLOCK, render(), args.check), args.check)


if __name__ == "__main__":
    main()
