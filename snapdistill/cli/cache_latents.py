"""`snapdistill cache-latents`: store each sample's latent and text embedding in the shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snapdistill.cli.app import app, checked_dry_run
from snapdistill.cli.options import (
    AllowDownload,
    AllowLost,
    Device,
    DryRun,
    Out,
    Overwrite,
    Resolution,
    Shards,
    Teacher,
)


@app.command("cache-latents")
def cache_latents(
    teacher: Teacher = "toy",
    shards: Shards = Path("runs/toy/shards"),
    out: Out = Path("runs/toy/shards-cached"),
    resolution: Resolution = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per VAE call.")] = 32,
    text_dtype: Annotated[str, typer.Option(
        "--text-dtype", help="fp16 (half the bytes) or fp32 (training identical to the uncached shards).")] = "fp16",
    device: Device = None,
    allow_download: AllowDownload = False,
    overwrite: Overwrite = False,
    allow_lost: AllowLost = False,
    dry_run: DryRun = False,
) -> None:
    """Write the shards again to OUT, each sample also carrying its VAE latent and caption embedding.

    distill-guidance and distill-steps read them instead of encoding every batch, and refuse them when they
    were made with another VAE, text encoder or --resolution.

    Examples:

      snapdistill cache-latents --teacher toy --shards runs/toy/shards --out runs/toy/shards-cached

      snapdistill cache-latents --teacher sd15 --shards data/laion-art --resolution 512 --device cuda \\
        --out data/laion-art-sd15-512

      accelerate launch -m snapdistill cache-latents --teacher sd21 --shards data/laion-art --out data/laion-art-sd21
    """
    from snapdistill.data import cache_latents as stage

    config = stage.CacheConfig(teacher=teacher, shards=shards, out=out, resolution=resolution, batch_size=batch_size,
                               text_dtype=text_dtype, device=device, allow_download=allow_download,
                               overwrite=overwrite, allow_lost=allow_lost)
    if checked_dry_run(config, dry_run):
        return
    manifest = stage.run(config)
    typer.echo(f"cached latents of {shards} into {out} ({manifest})")
