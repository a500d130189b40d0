"""User-facing errors: one clear line naming the input, no traceback soup."""

from __future__ import annotations

import os
import sys
from typing import Any

import click


class BevkdError(Exception):
    """Base class of errors caused by input (files, configs, stores), not by bugs.

    The message must name the offending file, frame or key and say what to do.
    """


class DataError(BevkdError):
    """A dataset file is missing, truncated or malformed."""


def run_cli(cli: click.Group, argv: list[str]) -> Any:
    """Run the click group; input errors print one line and exit 2 (BEVKD_DEBUG=1 re-raises)."""
    from bevkd.pipeline.config import ConfigError

    try:
        return cli.main(args=argv, prog_name="bevkd", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (BevkdError, ConfigError, FileNotFoundError) as exc:
        if os.environ.get("BEVKD_DEBUG"):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
