"""``bevkd config``: show the resolved config and its sha256."""

from __future__ import annotations

import click

from bevkd.pipeline.config import (
    TEACHER_ENTRY_FORMS,
    TEACHER_KINDS,
    config_sha256,
    config_yaml,
)
from bevkd.pipeline.options import config_options, resolve

TEACHERS_COMMENT = (
    f"# teachers: {', '.join(TEACHER_KINDS)}, or a custom teacher's factory: "
    f"{TEACHER_ENTRY_FORMS} (docs/teachers.md)"
)


@click.group("config")
def command() -> None:
    """Show and check resolved configs."""


@command.command("show")
@config_options
def show(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Print the resolved config (defaults < FILE < --set, then the defaults of the recipes
    student.recipe names for the distill weights it leaves unset) and its sha256.

    cache.teachers lists built-in teachers (lidar, fusion, label_encoder) or custom ones by
    their factory: my_pkg.teachers:build or path/to/file.py:build (docs/teachers.md)."""
    cfg = resolve(config_path, overrides)  # a bad config fails here, before torch is imported
    from bevkd.distill.recipes import with_recipe_defaults  # torch: only when it runs

    cfg = with_recipe_defaults(cfg)
    text = config_yaml(cfg)
    # the entry forms, as a YAML comment above the key (the saved configs carry no comments)
    click.echo(text.replace("\ncache:\n", f"\ncache:\n  {TEACHERS_COMMENT}\n", 1), nl=False)
    click.echo(f"# sha256: {config_sha256(cfg)}")
