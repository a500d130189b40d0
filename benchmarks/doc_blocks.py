"""The generated blocks of README.md and docs/*.md, read and rewritten as text.

A block is the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` (store_load.py
says ``begin`` for ``start``), each marker on its own line; the command its generator names
rewrites it. Every generator writes through :func:`replace_block`, in one of two ways:

- :func:`write_or_check` (docs_recipes.py, demo_readme.py): the block must exist, and a
  report-only mode (``--check``) writes nothing and exits 1 when the page would change;
- :func:`write_block` (the benchmarks' reports): the block is appended when the page lacks it,
  so several reports can share one results page.

tests/test_docs.py reads every block through :func:`blocks`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

MARKER = re.compile(r"^<!-- ([a-z0-9][a-z0-9-]*):(start|begin|end) -->$", re.MULTILINE)


class BlockError(ValueError):
    """A page whose block markers do not pair up."""


def blocks(text: str, where: str = "page", empty_ok: bool = False) -> dict[str, str]:
    """``{name: body}`` of every block in ``text``, in page order; the body excludes the marker
    lines. Unpaired, nested, repeated or (unless ``empty_ok``: a writer fills the empty
    placeholder a page gets first) empty blocks are a :class:`BlockError` naming ``where`` and
    the block."""
    found: dict[str, str] = {}
    open_name, open_end = None, 0
    for m in MARKER.finditer(text):
        name, kind = m.group(1), m.group(2)
        if kind in ("start", "begin"):
            if open_name is not None:
                raise BlockError(f"{where}: block '{name}' starts inside block '{open_name}'")
            if name in found:
                raise BlockError(f"{where}: block '{name}' appears twice")
            open_name, open_end = name, m.end() + 1
        else:
            if open_name != name:
                raise BlockError(f"{where}: '<!-- {name}:end -->' closes no open '{name}' block")
            body = text[open_end : m.start()]
            if not body.strip() and not empty_ok:
                raise BlockError(f"{where}: block '{name}' is empty")
            found[name] = body
            open_name = None
    if open_name is not None:
        raise BlockError(f"{where}: block '{open_name}' is never closed")
    return found


def replace_block(text: str, name: str, body: str, where: str = "page") -> str:
    """``text`` with block ``name``'s body replaced by ``body`` (a newline is added if it lacks
    one). The block must exist, empty or not: a generator never invents where its block goes."""
    if name not in blocks(text, where, empty_ok=True):
        raise BlockError(f"{where}: no block '{name}' (add its start and end markers first)")
    body = body if body.endswith("\n") else body + "\n"
    start = re.search(rf"^<!-- {re.escape(name)}:(start|begin) -->\n", text, re.MULTILINE)
    end = re.search(rf"^<!-- {re.escape(name)}:end -->$", text, re.MULTILINE)
    assert start is not None and end is not None  # blocks() found both
    return text[: start.end()] + body + text[end.start() :]


def write_or_check(path: Path, name: str, body: str, check: bool) -> bool:
    """Put ``body`` into block ``name`` of ``path``. ``check``: write nothing and report
    whether the page is current. Returns True when the page already held ``body``."""
    old = path.read_text()
    new = replace_block(old, name, body, str(path))
    current = new == old
    if check:
        state = "current" if current else "stale: rerun without --check to rewrite it"
        print(f"[{name}] {path}: {state}")
    elif not current:
        path.write_text(new)
        print(f"[{name}] {path}: rewritten")
    else:
        print(f"[{name}] {path}: already current")
    return current


def write_block(path: Path, name: str, text: str, marks: tuple[str, str] = ("start", "end"),
                title: str = "# bevkd results (generated blocks)") -> None:  # fmt: skip
    """Put ``text`` into block ``name`` of ``path``, appended between ``<!-- name:start -->``
    and ``<!-- name:end -->`` when the page lacks it. ``marks``: other marker words for an
    appended block (``("begin", "end")``); ``title``: the first line of a page made here."""
    old = path.read_text() if path.is_file() else f"{title}\n"
    if name in blocks(old, str(path), empty_ok=True):
        new = replace_block(old, name, text, str(path))
    else:
        start, end = f"<!-- {name}:{marks[0]} -->", f"<!-- {name}:{marks[1]} -->"
        new = old.rstrip("\n") + f"\n\n{start}\n{text}{end}\n"
    path.write_text(new)


def exit_code(current: bool, check: bool) -> None:
    """Exit 1 for a stale page under ``--check``."""
    if check and not current:
        sys.exit(1)
