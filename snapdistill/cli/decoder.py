"""`snapdistill distill-decoder`: a small VAE decoder distilled from the teacher's, on the shared loop."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer

from snapdistill.cli.app import app, checked_dry_run
from snapdistill.cli.distill import loop_command, train_config
from snapdistill.cli.options import Out, Shards, Teacher


@app.command("distill-decoder")
@loop_command
def distill_decoder(
    teacher: Teacher = "toy",
    shards: Shards = Path("runs/toy/shards"),
    out: Out = Path("runs/decoder"),
    arch: Annotated[str, typer.Option("--arch", help="tiny: AutoencoderTiny (TAESD); kl: the teacher's AutoencoderKL "
                                                     "layout at --width of its channels (SnapFusion).")] = "kl",
    width: Annotated[float, typer.Option("--width", help="Channel multiplier in (0, 1].")] = 0.5,
    loss: Annotated[str, typer.Option("--loss", help="Pixel loss to the teacher decoder's output: l2 or l1.")] = "l2",
    perceptual: Annotated[str | None, typer.Option(
        "--perceptual", help="Add a feature loss: 'toy' (the toy judge) or a folder in its format.")] = None,
    perceptual_weight: Annotated[float, typer.Option("--perceptual-weight", help="Weight of the feature loss.")] = 1.0,
    encoder_weight: Annotated[float, typer.Option(
        "--encoder-weight", help="Weight of the small VAE's own encoder loss (to the teacher's latents; 0: off).")] = 1.0,
    latents_from: Annotated[str, typer.Option(
        "--latents-from", help="images: the teacher encoder on the shards; sample: a sampler on their captions; "
                                "mix: half of each batch from either.")] = "mix",
    sampler: Annotated[str | None, typer.Option(
        "--sampler", help="With --latents-from sample or mix: the teacher or student sampled \\[default: --teacher].")] = None,
    sample_count: Annotated[int, typer.Option("--sample-count", help="Latents sampled once, before training.")] = 1024,
    sample_steps: Annotated[int | None, typer.Option(
        "--sample-steps", help="Their steps \\[default: a student's own, else 16].")] = None,
    into: Annotated[Path | None, typer.Option(
        "--into", help="A student folder: also write OUT/student, the student with the small decoder as vae/.")] = None,
    **shared,
) -> None:
    """Distil a small VAE decoder: the teacher decoder's output on the teacher's latents is the target.

    Examples:

      snapdistill distill-decoder --teacher toy --shards runs/toy/shards --arch kl --width 0.5 --out runs/dec

      snapdistill distill-decoder --teacher sd15 --shards data/laion-art --arch tiny --into runs/direct8/student --out runs/dec

      snapdistill sample --teacher runs/direct8/student --decoder runs/dec/decoder --toy-val 64 --out runs/s8
    """
    from snapdistill.distill import decoder_stage as stage

    args = {**locals(), **shared}
    config = stage.DecoderConfig(
        train=train_config(args),
        **{k: args[k] for k in {f.name for f in fields(stage.DecoderConfig)} - {"train"} if k in args})
    if checked_dry_run(config, shared["dry_run"]):
        return
    manifest = stage.run(config)
    typer.echo(f"decoder written to {Path(out) / 'decoder'} ({manifest})")
