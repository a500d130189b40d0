"""The ``bevkd`` command line. Commands are loaded lazily, so ``bevkd --help`` and
``bevkd config show`` never import torch, spconv or zarr."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

# command name -> "module:attribute" of a click command; the module is imported on use.
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("bevkd.pipeline.commands.config", "Show and check resolved configs."),
    "make-demo-data": (
        "bevkd.pipeline.commands.demo_data",
        "Write the synthetic driving world in nuScenes or KITTI format.",
    ),
    "index": ("bevkd.pipeline.commands.index", "Build or show the frame index of a dataset root."),
    "evaluate": (
        "bevkd.pipeline.commands.evaluate",
        "Evaluate detections (nuScenes devkit or KITTI AP|R40).",
    ),
    "train-teacher": (
        "bevkd.pipeline.commands.train_teacher",
        "Train a LiDAR, fusion or label-encoder teacher.",
    ),
    "train-student": (
        "bevkd.pipeline.commands.train_student",
        "Train a camera student against a teacher store (baseline | cmkd).",
    ),
    "teacher": (
        "bevkd.pipeline.commands.teacher",
        "Import an mmdet3d or OpenPCDet CenterPoint as a bevkd teacher.",
    ),
    "cache-teacher": (
        "bevkd.pipeline.commands.cache_teacher",
        "Run teachers once and write the teacher store.",
    ),
    "store": ("bevkd.pipeline.commands.store", "Inspect, verify, copy and draw teacher stores."),
    "demo": (
        "bevkd.pipeline.commands.demo",
        "Run the whole pipeline on the embedded synthetic default.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        command: click.Command = module.command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text from the table, so `bevkd --help` imports nothing heavy.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bevkd")
def cli() -> None:
    """bevkd: cached cross-modal knowledge distillation for camera BEV 3D detection.

    Stage one (cache-teacher) runs LiDAR / fusion teachers and the label encoder once and
    writes a checksummed Zarr store; stage two (train-student) trains camera students
    against it, with no teacher in the loop. Every stage takes --config FILE.yaml and repeatable --set key.sub=value.
    """


def run_cli(group: click.Group, argv: list[str]) -> Any:
    """Run the click group; input errors print one line and exit 2 (BEVKD_DEBUG=1 re-raises)."""
    from bevkd.pipeline.config import ConfigError
    from bevkd.pipeline.errors import BevkdError

    try:
        return group.main(args=argv, prog_name="bevkd", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (BevkdError, ConfigError, FileNotFoundError) as exc:
        if os.environ.get("BEVKD_DEBUG"):
            raise
        click.echo(f"error: {one_line(str(exc))}", err=True)
        sys.exit(2)


def one_line(message: str) -> str:
    """An error's message for the terminal. torch re-raises a DataLoader worker's error in the
    main process as "Caught <Type> in DataLoader worker process N." plus the worker's
    traceback; that becomes the worker's own message, then where it was raised."""
    lines = message.rstrip().splitlines()
    if len(lines) > 2 and lines[0].startswith("Caught ") and "Original Traceback" in lines[1]:
        where = lines[0][len("Caught ") :].rstrip(".")
        return f"{lines[-1].split(': ', 1)[-1]} ({where})"
    return message


def main(argv: list[str] | None = None) -> Any:
    return run_cli(cli, argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
