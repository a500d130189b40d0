"""``bevkd config``: show the resolved config and its sha256."""

from __future__ import annotations

import click

from bevkd.pipeline.config import config_sha256, config_yaml
from bevkd.pipeline.options import config_options, resolve


@click.group("config")
def command() -> None:
    """Show and check resolved configs."""


@command.command("show")
@config_options
def show(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Print the resolved config (defaults < FILE < --set, then the defaults of the recipes
    student.recipe names for the distill weights it leaves unset) and its sha256."""
    from bevkd.distill.recipes import with_recipe_defaults  # torch: only when it runs

    cfg = with_recipe_defaults(resolve(config_path, overrides))
    click.echo(config_yaml(cfg), nl=False)
    click.echo(f"# sha256: {config_sha256(cfg)}")
