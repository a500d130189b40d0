"""What tests/test_docs.py checks in README.md and docs/*.md, as functions of page text.

- :func:`broken_links`: every relative link and ``#anchor`` between the pages resolves, the
  anchor by both GitHub's and mkdocs' heading slugs (the pages are read in both places).
- :func:`bad_commands`: every ``bevkd`` command in a bash/sh/console block names a command
  and flags that exist, resolved by walking the click group of :mod:`bevkd.pipeline.cli` (no
  process per command); every ``make`` target exists in the Makefile.

Each returns a list of problems, one line each naming the page and line; empty when all is well.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
LINK = re.compile(r"(!?)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SHELL = {"bash", "sh", "shell", "console"}
FLAG = re.compile(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)")
SEPARATORS = {"&&", "||", ";", "|", ">", ">>", "2>&1", "&"}


def pages() -> list[Path]:
    """README.md and every page of docs/ (docs/waymo.md only once it exists)."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


# ------------------------------------------------------------------------------------------
# Markdown structure
# ------------------------------------------------------------------------------------------


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        found = FENCE.match(line)
        if found and (fence is None or found.group(2).startswith(fence)):
            fence = None if fence else found.group(2)
            continue
        if fence is None:
            yield number, line


def code_blocks(text: str) -> Iterator[tuple[int, str, list[str]]]:
    """(first line number, language, lines) of every fenced code block."""
    fence, lang, start, body = None, "", 0, list[str]()
    for number, line in enumerate(text.splitlines(), 1):
        found = FENCE.match(line)
        if fence is None and found:
            fence, lang, start, body = found.group(2), found.group(3), number + 1, []
        elif fence is not None and found and found.group(2).startswith(fence):
            yield start, lang, body
            fence = None
        elif fence is not None:
            body.append(line)


def github_slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, "_",
    "-" and spaces kept), each space a "-"."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def mkdocs_slug(heading: str) -> str:
    """Python-Markdown's toc slugify (mkdocs' default): ASCII only, punctuation dropped, runs
    of spaces and hyphens one "-"."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(text: str) -> tuple[set[str], set[str]]:
    """The (GitHub, mkdocs) anchors of a page's headings."""
    headings = [m.group(2) for _, line in prose_lines(text) if (m := HEADING.match(line))]
    return {github_slug(h) for h in headings}, {mkdocs_slug(h) for h in headings}


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line number, target) of every markdown link and image outside code."""
    for number, line in prose_lines(text):
        line = re.sub(r"`[^`]*`", "", line)  # a link inside a code span is not a link
        for m in LINK.finditer(line):
            yield number, m.group(2)


# ------------------------------------------------------------------------------------------
# Links
# ------------------------------------------------------------------------------------------


def broken_links(page: Path, text: str) -> list[str]:
    """Every relative link of ``page`` (its ``text``) that does not resolve: a missing file, or
    an anchor that is not a heading of its page under both slug rules."""
    problems = []
    for number, target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        where = page if not path_part else (page.parent / path_part).resolve()
        name = rel(where)
        if not where.exists():
            problems.append(f"{rel(page)}:{number}: link to {target}: {name} does not exist")
            continue
        if anchor and where.suffix == ".md":
            target_text = text if where == page else where.read_text()
            github, mkdocs = anchors(target_text)
            if anchor not in github or anchor not in mkdocs:
                problems.append(
                    f"{rel(page)}:{number}: link to {target}: {name} has no heading with anchor "
                    f"#{anchor} (GitHub: {anchor in github}, mkdocs: {anchor in mkdocs})"
                )
    return problems


# ------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------


def shell_commands(text: str) -> Iterator[tuple[int, str]]:
    """(line number, command line) of every bash/sh/console block, continuation lines joined
    and, in a console block, only the lines after a ``$`` prompt."""
    for start, lang, body in code_blocks(text):
        if lang not in SHELL:
            continue
        joined: list[tuple[int, str]] = []
        pending: tuple[int, str] | None = None
        for offset, line in enumerate(body):
            if lang == "console" and pending is None:
                if not line.lstrip().startswith("$ "):
                    continue
                line = line.lstrip()[2:]
            number = start + offset
            pending = (pending[0], pending[1] + " " + line) if pending else (number, line)
            if line.rstrip().endswith("\\"):
                pending = (pending[0], pending[1].rstrip()[:-1])
                continue
            joined.append(pending)
            pending = None
        if pending:
            joined.append(pending)
        yield from joined


def words(line: str) -> list[str]:
    """Shell words of ``line`` with its comment dropped (a line shlex cannot read: split at
    spaces, the comment cut at " #")."""
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return line.split(" #")[0].split()


def segments(line: str) -> Iterator[list[str]]:
    """The simple commands of a command line: its words split at ``&&``, ``|``, ``;`` ..."""
    segment: list[str] = []
    for word in words(line):
        if word in SEPARATORS:
            yield segment
            segment = []
        else:
            segment.append(word)
    yield segment


def invocations(line: str) -> Iterator[list[str]]:
    """The arguments of every bevkd invocation in a command line: after ``bevkd`` (or a path
    ending in it) or ``-m bevkd.pipeline.cli``."""
    for tokens in segments(line):
        for i, token in enumerate(tokens):
            starts = token == "bevkd" or token.endswith("/bevkd")
            module = token == "bevkd.pipeline.cli" and i > 0 and tokens[i - 1] == "-m"
            if starts or module:
                yield tokens[i + 1 :]
                break


def option_names(command: click.Command, ctx: click.Context) -> set[str]:
    names = {"--help", "-h"}
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def check_invocation(args: list[str], root: click.Group) -> list[str]:
    """What is wrong with ``bevkd <args>``: an unknown command or subcommand (``a|b``: each
    alternative must exist), or a ``--flag`` that none of the resolved commands takes."""
    ctx = click.Context(root, info_name="bevkd")
    commands: list[tuple[str, click.Command]] = [("bevkd", root)]
    rest = list(args)
    while all(isinstance(c, click.Group) for _, c in commands):
        word = next((w for w in rest if not w.startswith("-")), None)
        if word is None:
            break
        rest = rest[rest.index(word) + 1 :]
        found = []
        for path, group in commands:
            assert isinstance(group, click.Group)
            for name in word.split("|"):
                sub = group.get_command(ctx, name)
                if sub is None:
                    known = ", ".join(group.list_commands(ctx))
                    return [f"`{path}` has no command '{name}' (it has: {known})"]
                found.append((f"{path} {name}", sub))
        commands = found
    problems = []
    for flag in FLAG.findall(" ".join(rest)):
        if not any(flag in option_names(c, ctx) for _, c in commands):
            where = " / ".join(f"`{p}`" for p, _ in commands)
            problems.append(f"{where} has no option {flag}")
    return problems


def make_targets(makefile: Path = REPO / "Makefile") -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", makefile.read_text(), re.MULTILINE))


def bad_commands(page: Path, text: str, root: click.Group) -> list[str]:
    """Every bevkd command of ``page``'s shell blocks that names a command or flag the CLI
    lacks, and every ``make`` line whose target the Makefile lacks."""
    problems = []
    targets = make_targets()
    for number, line in shell_commands(text):
        for args in invocations(line):
            problems += [f"{rel(page)}:{number}: {p}" for p in check_invocation(args, root)]
        for tokens in segments(line):
            if tokens[:1] == ["make"]:
                named = [t for t in tokens[1:] if "=" not in t and not t.startswith("-")]
                problems += [
                    f"{rel(page)}:{number}: the Makefile has no target '{t}'"
                    for t in named
                    if t not in targets
                ]
    return problems
