"""`snapdistill inspect MODEL`: UNet parameters, UNet calls per image and measured s/image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from snapdistill.cli.app import app
from snapdistill.cli.options import AllowDownload, Device, Dtype


@app.command()
def inspect(
    model: Annotated[str, typer.Argument(help="toy, sd15, sd21, sd21-base, a pipeline or student folder, or a checkpoint file.")],
    steps: Annotated[int | None, typer.Option("--steps", help="Sampling steps (default: a student's own count, else 20).")] = None,
    guidance: Annotated[float | None, typer.Option(
        "--guidance", help="Guidance scale s \\[default: 7.5, or the scale a student records (a dmd generator: 1)].")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images in the timed batch.")] = 4,
    size: Annotated[int | None, typer.Option("--size", help="Image side (default: as `sample`: 512, or a smaller native size).")] = None,
    dtype: Dtype = "fp32",
    device: Device = None,
    allow_download: AllowDownload = False,
    decoder: Annotated[Path | None, typer.Option("--decoder", help="A distill-decoder OUT/decoder folder instead of the model's VAE.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print a model's UNet and decoder parameter counts, UNet calls per image and measured seconds per image,
    per UNet call and per decode.

    Examples:

      snapdistill inspect toy --steps 16

      snapdistill inspect runs/small8/student

      snapdistill inspect runs/direct8/student --decoder runs/dec/decoder

      snapdistill inspect sd15 --steps 8 --guidance 7.5 --size 512 --device cuda --dtype bf16 --json
    """
    from snapdistill.sampling.inspect import InspectConfig, inspect_model

    r = inspect_model(InspectConfig(model=model, steps=steps, guidance=guidance, batch_size=batch_size, size=size,
                                    dtype=dtype, device=device, allow_download=allow_download,
                                    decoder=decoder))
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    why = ("guidance embedding: 1 per step" if r["guidance_embedding"] else
           "classifier-free guidance: 2 per step" if r["unet_calls_per_image"] > r["steps"] else "no guidance: 1 per step")
    typer.echo(f"model: {r['model']}")
    typer.echo(f"UNet parameters: {r['unet_parameters']:,} ({r['unet_parameters'] / 1e6:.2f}M)")
    typer.echo(f"UNet calls per image: {r['unet_calls_per_image']} ({r['steps']} steps, guidance {r['guidance']:g}, {why})")
    typer.echo(f"s/image: {r['s_per_image']:.4f} (batch {r['batch_size']}, {r['size']} px, {r['scheduler']}, "
               f"{r['device']}, {r['dtype']})")
    from snapdistill.models.memory import size_text

    mem = r["training_memory"]
    typer.echo(f"training memory per process (estimate; same-size student, AdamW, EMA, batch {r['batch_size']}, "
               f"{r['size']} px, {r['dtype']}): {size_text(mem['plain']['total'])}, with gradient checkpointing "
               f"{size_text(mem['checkpointed']['total'])} (frozen parts {size_text(mem['plain']['frozen teacher, VAE, text encoder'])})")
    typer.echo(f"decoder parameters: {r['decoder_parameters']:,} ({r['decoder_parameters'] / 1e6:.2f}M)"
               + (f" from {r['decoder']}" if r["decoder"] else ""))
    typer.echo(f"s per image: UNet call {r['s_per_unet_call']:.5f}, decode {r['s_per_decode']:.5f}")
