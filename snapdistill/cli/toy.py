"""`snapdistill toy ...`: retrain the shipped toy world's judge, VAE and teacher."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import typer

from snapdistill.cli.app import app
from snapdistill.cli.options import DryRun
from snapdistill.outdir import prepare_out

toy_app = typer.Typer(
    help=(
        "Retrain the toy world's judge, VAE and teacher (shipped in snapdistill/toy/weights).\n\n"
        "Examples:\n\n"
        "  snapdistill toy judge\n\n"
        "  snapdistill toy teacher --minutes 70 --work runs/toy-teacher"
    ),
    no_args_is_help=True,
)
app.add_typer(toy_app, name="toy")


def _logger(path: Path):
    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        typer.echo(line)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    return log


def _echo_settings(**settings) -> None:
    """`--dry-run` of the toy commands: their settings as JSON; nothing is written."""
    typer.echo(json.dumps(settings, indent=2, default=str))


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


@toy_app.command("judge")
def judge_cmd(
    out: Path = typer.Option(None, help="Judge folder to write (default: the shipped one)."),
    steps: int = typer.Option(1000, help="Optimiser steps."),
    seed: int = typer.Option(0, help="Seed of data, init and augmentation."),
    threads: int = typer.Option(1, help="CPU threads for torch."),
    dry_run: DryRun = False,
) -> None:
    """Train the toy judge (an attribute classifier) and measure it on real val images.

    Example: snapdistill toy judge --out runs/judge
    """
    from snapdistill.toy.judge import judge_stage
    from snapdistill.toy.paths import WEIGHTS_DIR

    if dry_run:
        _echo_settings(out=out or WEIGHTS_DIR / "judge", steps=steps, seed=seed, threads=threads)
        return
    out = prepare_out(out or WEIGHTS_DIR / "judge")
    _threads(threads)
    judge_stage(out, seed=seed, steps=steps, log=_logger(out / "train.log"))


@toy_app.command("vae")
def vae_cmd(
    out: Path = typer.Option(Path("runs/toy-teacher/vae"), help="VAE folder to write."),
    steps: int = typer.Option(2000, help="Optimiser steps."),
    seed: int = typer.Option(0, help="Seed of data and init."),
    threads: int = typer.Option(1, help="CPU threads for torch."),
    dry_run: DryRun = False,
) -> None:
    """Train the toy VAE alone (`toy teacher` trains it first when its work folder has none).

    Example: snapdistill toy vae --out runs/toy-teacher/vae
    """
    from snapdistill.toy.vae import vae_stage

    if dry_run:
        _echo_settings(out=out, steps=steps, seed=seed, threads=threads)
        return
    out = prepare_out(out)
    _threads(threads)
    vae_stage(out, seed=seed, steps=steps, log=_logger(out / "train.log"))


@toy_app.command("teacher")
def teacher_cmd(
    out: Path = typer.Option(None, help="Pipeline folder to write (default: the shipped one)."),
    work: Path = typer.Option(
        Path("runs/toy-teacher"), help="Resumable state: vae/, checkpoint.pt, train.log."
    ),
    minutes: float = typer.Option(None, help="Wall-clock budget of this call; rerun to continue."),
    steps: int = typer.Option(None, help="Optimiser steps of the whole run (default: the recipe's)."),
    batch: int = typer.Option(None, help="Latents per step (default: the recipe's)."),
    seed: int = typer.Option(0, help="Seed of data, init and noise."),
    n_eval: int = typer.Option(1024, help="Val prompts sampled to measure the finished teacher."),
    threads: int = typer.Option(1, help="CPU threads for torch."),
    dry_run: DryRun = False,
) -> None:
    """Train the toy teacher (VAE, then CLIP text encoder + UNet), export it and measure it with the judge.

    Example: snapdistill toy teacher --minutes 70 --work runs/toy-teacher
    """
    from snapdistill.toy.paths import WEIGHTS_DIR
    from snapdistill.toy.teacher import TeacherRecipe, teacher_stage

    overrides = {k: v for k, v in {"steps": steps, "batch": batch}.items() if v is not None}
    recipe = TeacherRecipe(seed=seed, **overrides)
    if dry_run:
        typer.echo(json.dumps(asdict(recipe), indent=2))
        return
    # The exported pipeline has a vae/ of its own: inside --work it would replace the VAE a resume reads.
    out = prepare_out(out or WEIGHTS_DIR / "teacher", {"--work": work})
    work = prepare_out(work, flag="--work")
    _threads(threads)
    metrics = teacher_stage(
        out, work, recipe, minutes=minutes, n_eval=n_eval, log=_logger(work / "train.log")
    )
    if metrics is not None:
        typer.echo(json.dumps(metrics["eval"], indent=2))
