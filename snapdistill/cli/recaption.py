"""`snapdistill recaption`: clean captions, or replace them with a captioning model's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snapdistill.cli.app import app, checked_dry_run
from snapdistill.cli.options import AllowLost, Device, DryRun, Dtype, Out


@app.command()
def recaption(
    input_dir: Annotated[Path, typer.Option("--in", "-i", help="Shards folder written by build-data (or recaption).")],
    out: Out = Path("runs/recaptioned"),
    mode: Annotated[str, typer.Option("--mode", help="clean (rules only), replace (model caption) or keep-better "
                                      "(higher CLIP similarity of the two).")] = "clean",
    captioner: Annotated[Path | None, typer.Option("--captioner", help="Local captioner folder: BLIP, BLIP-2, or "
                                                   "anything AutoModelForImageTextToText loads.")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="Text the captioner continues, e.g. 'a photography of'.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest model caption, in tokens.")] = 40,
    clip: Annotated[Path | None, typer.Option("--clip", help="open_clip folder (open_clip_config.json + weights) or "
                                              "checkpoint file, for keep-better.")] = None,
    clip_arch: Annotated[str | None, typer.Option("--clip-arch", help="Architecture of a --clip checkpoint file, e.g. ViT-L-14.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per model call.")] = 16,
    dtype: Dtype = "fp32",
    device: Device = None,
    allow_lost: AllowLost = False,
    dry_run: DryRun = False,
) -> None:
    """Write recaptioned shards to OUT: new `txt`, the old one kept as `txt_orig`, json gains caption_source.

    Examples:

      snapdistill recaption --in runs/shards --mode clean --out runs/shards-clean

      snapdistill recaption --in shards/laion --mode replace --captioner models/blip-large --prompt "a photography of" \\
        --dtype fp16 --device cuda --out shards/laion-blip

      snapdistill recaption --in shards/laion --mode keep-better --captioner models/blip-large \\
        --clip models/ViT-L-14-openai.bin --clip-arch ViT-L-14 --out shards/laion-best

      accelerate launch -m snapdistill recaption --in shards/laion --mode replace --captioner models/blip2 --out shards/x
    """
    from snapdistill.data import recaption as stage

    config = stage.RecaptionConfig(
        input=input_dir, out=out, mode=mode, captioner=captioner, prompt=prompt, max_new_tokens=max_new_tokens,
        clip=clip, clip_arch=clip_arch, batch_size=batch_size, dtype=dtype, device=device, allow_lost=allow_lost,
    )
    if checked_dry_run(config, dry_run):
        return
    manifest = stage.run(config)
    typer.echo(f"recaptioned {input_dir} into {out} ({manifest})")
