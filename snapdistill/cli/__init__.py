"""The `snapdistill` command: a thin Typer layer (parse -> config -> `stage.run(config)`).

One file per command. Known errors (`SnapdistillError`) become one line on stderr and exit code 2;
set SNAPDISTILL_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from snapdistill import __version__
from snapdistill.errors import SnapdistillError, storage_message

app = typer.Typer(
    name="snapdistill",
    help=(
        "Distil Stable Diffusion into fast students: guidance distillation, step distillation, "
        "sampling and evaluation.\n\n"
        "Examples:\n\n"
        "  snapdistill sample --teacher toy --toy-val 16 --steps 16 --out runs/toy16\n\n"
        "  snapdistill sample --teacher sd15 --coco captions_val2017.json --limit 5000 --out runs/sd15"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def echo_config(config) -> None:
    """`--dry-run`: print a stage's resolved config (a dataclass) as JSON; nothing is written."""
    import dataclasses
    import json

    typer.echo(json.dumps(dataclasses.asdict(config), indent=2, default=str))


def checked_dry_run(config, dry_run: bool) -> bool:
    """Check `config` before anything loads; with `--dry-run` print it. True when the command stops here."""
    config.check()
    if dry_run:
        echo_config(config)
    return dry_run


def _version(value: bool) -> None:
    if value:
        typer.echo(f"snapdistill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """snapdistill: make Stable Diffusion fast."""


def _register() -> None:
    # Commands register themselves on import; only working commands are listed here.
    from snapdistill.cli import (  # noqa: F401
        build_data,
        cache_latents,
        decoder,
        distill,
        eval,
        inspect_cmd,
        recaption,
        sample,
        toy,
    )


_register()


def main() -> None:
    """Entry point: run the app, turning known errors (and failed writes: a full disk, a read-only folder) into
    one line and exit code 2."""
    try:
        app()  # standalone: click reports usage errors itself (exit 2)
    except SnapdistillError as e:
        if os.environ.get("SNAPDISTILL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a failed write
        from snapdistill.outdir import prepared

        message = storage_message(e, prepared[-1] if prepared else None)
        if message is None or os.environ.get("SNAPDISTILL_DEBUG"):
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(SnapdistillError.exit_code)
