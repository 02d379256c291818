"""`snapdistill eval`: score sample runs (HPSv2, FID, CLIP score, toy judge) into a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snapdistill.cli.app import app, checked_dry_run
from snapdistill.cli.options import Device, DryRun, Out
from snapdistill.errors import SnapdistillError


def parse_scales(text: str | None) -> list[float] | None:
    """'1,2,4,7.5' -> [1.0, 2.0, 4.0, 7.5]."""
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SnapdistillError(f"--guidance-sweep expects numbers separated by commas (e.g. 1,2,4,7.5), got '{text}'") from None


@app.command("eval")
def eval_command(
    runs: Annotated[list[Path], typer.Argument(help="Sample run folders (written by `snapdistill sample`).", show_default=False)],
    out: Out = Path("runs/eval"),
    label: Annotated[list[str] | None, typer.Option("--label", help="Row name of each run, in order (default: from its model).")] = None,
    hps_checkpoint: Annotated[Path | None, typer.Option("--hps-checkpoint", help="HPS_v2_compressed.pt or HPS_v2.1_compressed.pt.")] = None,
    hps_version: Annotated[str | None, typer.Option("--hps-version", help="v2.0 or v2.1: the checkpoint's version (required with --hps-checkpoint).")] = None,
    clip_model: Annotated[str | None, typer.Option("--clip-model", help="open_clip architecture (ViT-g-14, ViT-L-14...) or a JSON config.")] = None,
    clip_checkpoint: Annotated[Path | None, typer.Option("--clip-checkpoint", help="Weights file of --clip-model.")] = None,
    inception_weights: Annotated[Path | None, typer.Option("--inception-weights", help="torch-fidelity's FID Inception weights (.pth).")] = None,
    fid_reference: Annotated[Path | None, typer.Option("--fid-reference", help="Folder of reference images, e.g. COCO val2017/.")] = None,
    fid_reference_limit: Annotated[int | None, typer.Option("--fid-reference-limit", help="Use the first N reference images.")] = None,
    fid_cache: Annotated[Path | None, typer.Option("--fid-cache", help="Reference statistics cache (default: ~/.cache/snapdistill/fid).")] = None,
    toy: Annotated[bool | None, typer.Option("--toy/--no-toy", help="Toy judge metrics (default: for runs of --toy-val prompts).")] = None,
    mse_reference: Annotated[Path | None, typer.Option("--mse-reference", help="A sample run of the same prompts and seeds: same-noise image MSE.")] = None,
    guidance_sweep: Annotated[str | None, typer.Option("--guidance-sweep", help="Re-sample every run at these guidance scales, e.g. 1,2,4,7.5,10.")] = None,
    sweep_run: Annotated[list[Path] | None, typer.Option("--sweep-run", help="Sweep only this run folder (repeatable; default: every run).")] = None,
    include_report: Annotated[list[Path] | None, typer.Option("--include-report", help="An earlier eval folder whose rows join the table.")] = None,
    grid_images: Annotated[int, typer.Option("--grid-images", help="Prompts in the model-comparison grid.")] = 6,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per metric forward pass.")] = 32,
    device: Device = None,
    dry_run: DryRun = False,
) -> None:
    """Score sample runs and write OUT/report.json, report.md, plots and manifest.json.

    Examples:

      snapdistill eval runs/toy8 runs/toy16 runs/direct8 --mse-reference runs/toy20 --out runs/eval

      snapdistill eval runs/hps-sd15 runs/hps-direct8 --hps-checkpoint HPS_v2.1_compressed.pt --hps-version v2.1

      snapdistill eval runs/coco8 --inception-weights weights-inception-2015-12-05-6726825d.pth --fid-reference val2017/ --clip-model ViT-g-14 --clip-checkpoint open_clip_vit_g.bin --guidance-sweep 1,2,4,7.5,10

      snapdistill eval runs/toy16 runs/direct8 --guidance-sweep 1,4,10 --sweep-run runs/toy16 --out runs/eval

      accelerate launch -m snapdistill eval runs/coco8 --hps-checkpoint HPS_v2.1_compressed.pt --hps-version v2.1
    """
    from snapdistill.evaluation import stage

    config = stage.EvalConfig(
        runs=runs, out=out, labels=label or None, hps_checkpoint=hps_checkpoint, hps_version=hps_version,
        clip_model=clip_model, clip_checkpoint=clip_checkpoint, inception_weights=inception_weights,
        fid_reference=fid_reference, fid_reference_limit=fid_reference_limit, fid_cache=fid_cache, toy=toy,
        mse_reference=mse_reference, guidance_sweep=parse_scales(guidance_sweep),
        sweep_runs=sweep_run or None, include_reports=include_report or [], grid_images=grid_images, batch_size=batch_size, device=device,
    )
    if checked_dry_run(config, dry_run):
        return
    manifest = stage.run(config)
    typer.echo(f"wrote {out / stage.REPORT_MD} ({manifest})")
