"""`snapdistill sample`: render prompts with a teacher or a distilled student."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snapdistill.cli.app import app, checked_dry_run
from snapdistill.cli.options import AllowDownload, Device, DryRun, Dtype, Out, Seed, Teacher


@app.command()
def sample(
    teacher: Teacher = "toy",
    out: Out = Path("runs/sample"),
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeatable).")] = None,
    prompts: Annotated[Path | None, typer.Option("--prompts", help=".txt (one per line), .json list or .jsonl with 'prompt'.")] = None,
    coco: Annotated[Path | None, typer.Option("--coco", help="COCO captions_val2017.json: first caption per image.")] = None,
    hps_benchmark: Annotated[Path | None, typer.Option("--hps-benchmark", help="Folder with anime/concept-art/paintings/photo.json.")] = None,
    toy_val: Annotated[int | None, typer.Option("--toy-val", help="The first N toy-world val captions.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use at most N prompts (per style for HPS).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Sampling steps \\[default: a student's own count, else 20].")] = None,
    guidance: Annotated[float | None, typer.Option(
        "--guidance", help="Guidance scale s \\[default: 7.5; a student that records its own (a --mode dmd generator, "
                           "guidance baked in: 1), that one].")] = None,
    size: Annotated[int | None, typer.Option("--size", help="Image side \\[default: 512; the toy world keeps its native size].")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="dpmsolver++, ddim, euler or lcm \\[default: a student's own, else dpmsolver++].")] = None,
    spacing: Annotated[str, typer.Option("--timestep-spacing", help="trailing, leading or linspace.")] = "trailing",
    negative_prompt: Annotated[str | None, typer.Option("--negative-prompt", help="Negative prompt for every image.")] = None,
    seed: Seed = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per pipeline call.")] = 8,
    dtype: Dtype = "fp32",
    device: Device = None,
    allow_download: AllowDownload = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace images in --out made with other settings or by a model changed since.")] = False,
    allow_off_grid: Annotated[bool, typer.Option("--allow-off-grid", help="Let --steps/--scheduler sample a step-distilled student off the grid it was trained on (recorded in the manifest).")] = False,
    decoder: Annotated[Path | None, typer.Option("--decoder", help="A distill-decoder OUT/decoder folder: decode with it instead of the model's VAE.")] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="UNet and decoder in channels-last memory format (on CPU it pays for the decoders and slows the UNet; README, \"Speed where users feel it\").")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the UNet and the decoder: the first batch compiles (60-90 s for the SD 1.5 UNet on 2 CPU cores); needs a C++ compiler on CPU, Triton on CUDA.")] = False,
    dry_run: DryRun = False,
) -> None:
    """Render prompts into OUT/images, with prompts.jsonl, grid.png and manifest.json.

    Examples:

      snapdistill sample --teacher toy --toy-val 64 --steps 16 --out runs/toy16

      snapdistill sample --teacher sd15 --coco annotations/captions_val2017.json --limit 5000 --steps 8 --out runs/coco8

      snapdistill sample --teacher runs/direct8/student --hps-benchmark hps_prompts/ --out runs/hps8

      snapdistill sample --teacher runs/consistency/student --toy-val 64 --steps 4 --out runs/lcm4

      snapdistill sample --teacher runs/direct8/student --decoder runs/dec/decoder --toy-val 64 --out runs/s8-smalldec

      snapdistill sample --teacher runs/direct8/student --toy-val 1024 --compile --out runs/s8-compiled

      accelerate launch -m snapdistill sample --teacher sd15 --prompts prompts.txt --out runs/x
    """
    from snapdistill.sampling import stage
    from snapdistill.sampling.prompts import collect_prompts

    source = {"prompt": prompt, "prompts": prompts, "coco": coco, "hps_benchmark": hps_benchmark,
              "toy_val": toy_val, "limit": limit}
    config = stage.SampleConfig(
        model=teacher, out=out, source={k: v for k, v in source.items() if v is not None}, steps=steps,
        guidance=guidance, size=size, scheduler=scheduler, spacing=spacing, negative_prompt=negative_prompt,
        seed=seed, batch_size=batch_size, dtype=dtype, device=device, allow_download=allow_download,
        overwrite=overwrite, allow_off_grid=allow_off_grid, decoder=decoder,
        channels_last=channels_last, compile=compile,
    )
    # Checked before the prompts are read: --limit 0 or -1 would silently change which prompts.
    if checked_dry_run(config, dry_run):
        return
    items = collect_prompts(prompts=prompt, prompts_file=prompts, coco=coco, hps_dir=hps_benchmark,
                            toy_val=toy_val, limit=limit)
    manifest = stage.run(config, items)
    typer.echo(f"wrote {len(items)} images to {out / 'images'} ({manifest})")
