"""The Typer app every command registers on, and what all commands share: the dry run and `--version`."""

from __future__ import annotations

import typer

from snapdistill import __version__

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
