"""User-facing errors: one clear line naming the input, no traceback soup.

A pipeline leaf: any folder may import it, so it imports no click and no bevkd folder (the CLI
that prints these errors is :func:`bevkd.pipeline.cli.run_cli`).
"""

from __future__ import annotations


class BevkdError(Exception):
    """Base class of errors caused by input (files, configs, stores), not by bugs.

    The message must name the offending file, frame or key and say what to do.
    """


class DataError(BevkdError):
    """A dataset file is missing, truncated or malformed."""
