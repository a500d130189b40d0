"""Click options shared by every stage command: --config FILE and repeatable --set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from bevkd.pipeline.config import Config, load_config


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--config`` and ``--set`` to a command; it receives ``cfg: Config``."""
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY.SUB=VALUE",
        help="Override one config value (YAML syntax), e.g. --set train.epochs=2. Repeatable; applied last.",
    )(func)
    func = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Experiment YAML holding only the deltas from the built-in defaults.",
    )(func)
    return func


def resolve(config_path: str | None, overrides: tuple[str, ...]) -> Config:
    return load_config(config_path, overrides)
