"""`snapdistill build-data`: raw image–text sources -> filtered, resized WebDataset shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from snapdistill.cli.app import app, checked_dry_run
from snapdistill.cli.options import Device, DryRun, Out, Seed
from snapdistill.data.filters import MAX_PIXELS


@app.command("build-data")
def build_data(
    source: Annotated[list[str], typer.Option("--source", "-s", help=(
        "KIND:PATH[,weight=W][,count=N][,opt=value] (repeatable). KIND: coco, laion-art, diffusiondb, hpsv2, "
        "folder, table, toy. Options: coco images=DIR captions=first|all; laion-art images=DIR caption=COL "
        "(for a plain parquet); hpsv2 images=DIR pick=preferred|all; table image=COL caption=COL root=DIR; "
        "toy split=train|val seed=S."))],
    out: Out = Path("runs/shards"),
    resolution: Annotated[int, typer.Option("--resolution", help="Output side: resize the short side, centre-crop.")] = 512,
    shard_size: Annotated[int, typer.Option("--shard-size", help="Samples per shard.")] = 1000,
    prefix: Annotated[str, typer.Option("--prefix", help="Shards are PREFIX-000000.tar, ...")] = "shard",
    workers: Annotated[int, typer.Option("--workers", "-j", help="Worker processes (the output is the same for any N).")] = 1,
    shard_index: Annotated[int, typer.Option("--shard-index", help="This array job's part of the input (0-based).")] = 0,
    num_shards: Annotated[int, typer.Option("--num-shards", help="Number of array jobs splitting the input.")] = 1,
    limit: Annotated[int | None, typer.Option("--limit", help="Read at most N input records in all.")] = None,
    seed: Seed = 0,
    reduced_decode: Annotated[bool, typer.Option("--reduced-decode/--full-decode",
                                         help="Decode JPEGs >= 2x the target at 1/2, 1/4 or 1/8 scale.")] = True,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help=(
        "Reject images whose header gives more than N pixels (width x height) as too_large, before any "
        "decoding; PIL's decompression-bomb limit by default."))] = MAX_PIXELS,
    min_side: Annotated[int | None, typer.Option("--min-side", help="Drop images whose short side is below N px.")] = None,
    min_aspect: Annotated[float | None, typer.Option("--min-aspect", help="Drop images with width/height below this.")] = None,
    max_aspect: Annotated[float | None, typer.Option("--max-aspect", help="Drop images with width/height above this.")] = None,
    max_nsfw: Annotated[float | None, typer.Option("--max-nsfw", help="Drop records whose NSFW score (LAION punsafe, "
                                           "DiffusionDB image_nsfw/prompt_nsfw) is above this.")] = None,
    max_watermark: Annotated[float | None, typer.Option("--max-watermark", help="Drop records with pwatermark above this.")] = None,
    min_aesthetic: Annotated[float | None, typer.Option("--min-aesthetic", help="Drop records with an aesthetic score below this.")] = None,
    min_caption_chars: Annotated[int | None, typer.Option("--min-caption-chars", help="Drop captions shorter than N characters.")] = None,
    max_caption_chars: Annotated[int | None, typer.Option("--max-caption-chars", help="Drop captions longer than N characters.")] = None,
    dedup: Annotated[bool, typer.Option("--dedup/--no-dedup", help="Drop exact duplicate images.")] = True,
    max_caption_repeats: Annotated[int | None, typer.Option("--max-caption-repeats",
                                                    help="Keep at most N samples with the same caption.")] = None,
    hps_threshold: Annotated[float | None, typer.Option("--hps-threshold", help="Drop samples with HPSv2 score below this.")] = None,
    hps_checkpoint: Annotated[Path | None, typer.Option("--hps-checkpoint", help="HPS_v2(.1)_compressed.pt.")] = None,
    hps_version: Annotated[str | None, typer.Option("--hps-version", help="v2.0 or v2.1 (scores are not comparable).")] = None,
    device: Device = None,
    coco_captions: Annotated[str | None, typer.Option("--coco-captions", help="Default for coco sources: first or all.")] = None,
    hpsv2_images: Annotated[str | None, typer.Option("--hpsv2-images", help="Default for hpsv2 sources: preferred or all.")] = None,
    image_column: Annotated[str | None, typer.Option("--image-column", help="Default image-path column of table sources.")] = None,
    caption_column: Annotated[str | None, typer.Option("--caption-column", help="Default caption column of table/laion-art parquet sources.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
    dry_run: DryRun = False,
) -> None:
    """Build WebDataset shards (jpg, txt, json) plus rejects.jsonl and manifest.json in OUT.

    A stopped run resumes when started again with the same flags. For array jobs, give each
    --shard-index its own --out; shard numbers never collide, so the folders can be merged.

    Examples:

      snapdistill build-data --source toy:2000 --resolution 32 --out runs/toy-shards

      snapdistill build-data --source coco:coco/annotations/captions_train2017.json --workers 8 --out shards/coco

      snapdistill build-data --source laion-art:laion-art/,weight=3 --source diffusiondb:diffusiondb/,weight=1 \\
        --max-nsfw 0.5 --max-watermark 0.5 --min-side 512 --out shards/mix

      snapdistill build-data --source hpsv2:HPDv2/train.json --hps-threshold 27 --hps-version v2.1 \\
        --hps-checkpoint HPS_v2.1_compressed.pt --device cuda --out shards/hps

      snapdistill build-data --source folder:my_images/ --shard-index $SLURM_ARRAY_TASK_ID --num-shards 16 \\
        --out shards/part-$SLURM_ARRAY_TASK_ID
    """
    from snapdistill.data import build as stage
    from snapdistill.data.filters import FilterConfig
    from snapdistill.data.sources import parse_spec

    defaults = {"captions": coco_captions, "pick": hpsv2_images, "image": image_column, "caption": caption_column}
    filters = FilterConfig(
        max_pixels=max_pixels, min_side=min_side, min_aspect=min_aspect, max_aspect=max_aspect, max_nsfw=max_nsfw,
        max_watermark=max_watermark, min_aesthetic=min_aesthetic, min_caption_chars=min_caption_chars,
        max_caption_chars=max_caption_chars, dedup=dedup, max_caption_repeats=max_caption_repeats,
    )
    config = stage.BuildConfig(
        sources=[parse_spec(s, defaults) for s in source], out=out, resolution=resolution, shard_size=shard_size,
        prefix=prefix, workers=workers, shard_index=shard_index, num_shards=num_shards, limit=limit, seed=seed,
        reduced_decode=reduced_decode, filters=filters, hps_threshold=hps_threshold, hps_checkpoint=hps_checkpoint,
        hps_version=hps_version, device=device, progress=progress,
    )
    if checked_dry_run(config, dry_run):
        return
    manifest = stage.run(config)
    counts = json.loads(manifest.read_text(encoding="utf-8"))["counts"]
    typer.echo(f"wrote {counts['written']} samples in {counts['shards']} shards to {out} "
               f"({counts['seen'] - counts['written']} rejected; see {out / 'rejects.jsonl'})")
