"""The `sample` stage: render prompts with a teacher or student pipeline into an image folder.

Every image depends only on (prompt, seed): each gets its own CPU `torch.Generator`, so batch size,
device and the number of processes never change its noise (batched float kernels may still move a pixel by
one grey level between batch sizes; see README). Outputs are named by prompt index and seed, a
rerun skips images already present, and `manifest.json` is written last.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from snapdistill.errors import SnapdistillError
from snapdistill.jsonl import read_json_object
from snapdistill.manifest import (
    MANIFEST,
    atomic_write_text,
    input_entry,
    read_manifest,
    refuse_other_settings,
    settings_diff,
    write_manifest,
)
from snapdistill.models.loading import (
    default_device,
    load_pipeline,
    model_fingerprint,
    resolve_dtype,
    resolve_model,
)
from snapdistill.models.student_record import StudentRecord
from snapdistill.outdir import prepare_out
from snapdistill.sampling.config import SampleConfig
from snapdistill.sampling.prompts import PromptItem
from snapdistill.sampling.render import check_grid, count_unet_rows, generate, resolve_settings, to_uint8
from snapdistill.sampling.speedups import check_compile, compile_failure, speed_up

GRID_IMAGES = 16
RUN_CONFIG = "run.json"
# Settings that decide the pixels: a rerun into the same folder must match them to reuse images.
_IMAGE_KEYS = ("model_path", "model_fingerprint", "steps", "guidance", "size", "scheduler", "negative_prompt", "dtype",
               "decoder", "decoder_fingerprint")
# ... and the batch composition: an image's last bits depend on the batch it was drawn in (the batched kernels
# reduce in another order), so a folder finished with another --batch-size or number of processes would mix two.
# The same holds for the speed-ups (other kernels). A run.json written before these were recorded is not compared
# on them.
_BATCH_KEYS = ("batch_size", "processes", "channels_last", "compile")


def use_decoder(pipe, model_path: Path, decoder: Path | None) -> dict:
    """Swap the small decoder of `decoder` into `pipe` (refused when trained for another latent space); return
    the settings that identify it (none without one)."""
    if decoder is None:
        return {}
    from snapdistill.models.decoder import pipeline_latent_space, swap_decoder

    vae_dir = Path(model_path) / "vae" if Path(model_path).is_dir() else None
    swap_decoder(pipe, Path(decoder), pipeline_latent_space(pipe, vae_dir))
    return {"decoder": str(Path(decoder).resolve()), "decoder_fingerprint": model_fingerprint(Path(decoder))}


def image_name(item: PromptItem, seed: int) -> str:
    """Relative output path: HPSv2's `{style}/{idx:05d}.jpg`, else `{idx:05d}-s{seed}.png`."""
    if item.style:
        return f"{item.style}/{item.index:05d}.jpg"
    return f"{item.index:05d}-s{seed}.png"


def save_image(path: Path, pixels: np.ndarray) -> None:
    """Save uint8 pixels atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fmt = "JPEG" if path.suffix == ".jpg" else "PNG"
    try:
        Image.fromarray(pixels).save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        os.replace(tmp, path)
    except BaseException:  # a full disk leaves no partial file behind
        tmp.unlink(missing_ok=True)
        raise


def save_grid(paths: list[Path], out: Path, columns: int = 4) -> None:
    """A grid PNG of the given images (the first `GRID_IMAGES` of a run)."""
    images = [Image.open(p).convert("RGB") for p in paths]
    if not images:
        return
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % columns) * w, (i // columns) * h))
    grid.save(out)


def _check_rerun(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to mix images of different settings (or of a model changed since) in one folder; with
    `overwrite`, clear the old images instead."""
    path = out / RUN_CONFIG
    if not path.is_file():
        return
    old = read_json_object(path, "sampling settings (run.json)")
    diff = settings_diff(old, settings, _IMAGE_KEYS + tuple(k for k in _BATCH_KEYS if k in old))
    if not overwrite:
        refuse_other_settings(f"{out}: holds images", diff, "use a new --out or --overwrite")
    if diff:
        shutil.rmtree(out / "images", ignore_errors=True)
        path.unlink()


def run(config: SampleConfig, items: list[PromptItem]) -> Path:
    """Render `items` into `config.out`; return the manifest path."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from snapdistill.dist import process_state

    config.check()
    if not items:
        raise SnapdistillError("no prompts to render")
    out = Path(config.out)
    state = process_state()
    device = config.device or (str(state.device) if state.num_processes > 1 else default_device())
    dtype = resolve_dtype(config.dtype, device)
    if config.compile:
        check_compile(device)
    model = resolve_model(config.model, allow_download=config.allow_download)
    warning = check_grid(config, StudentRecord.read(model.path))
    if warning and state.is_main_process:
        print(f"warning: {warning}", file=sys.stderr)
    prepare_out(out, config.inputs(model.path), create=state.is_main_process)
    pipe = load_pipeline(model, dtype=dtype, device=device, allow_download=config.allow_download)
    settings, pipe.scheduler = resolve_settings(config, pipe, model.path)
    settings.update(use_decoder(pipe, model.path, config.decoder))
    settings.update(speed_up(pipe, channels_last=config.channels_last, compile=config.compile))
    settings.update(batch_size=config.batch_size, processes=state.num_processes)
    if state.is_main_process:
        _check_rerun(out, settings, config.overwrite)
        previous = (read_manifest(out) or {}).get("metrics", {})  # same settings: its costs still hold
        (out / MANIFEST).unlink(missing_ok=True)  # the folder is no longer a finished run
        atomic_write_text(out / RUN_CONFIG, json.dumps(settings, indent=2) + "\n")
        rows = [{"index": it.index, "prompt": it.prompt, "seed": config.seed + it.index, "style": it.style,
                 "file": f"images/{image_name(it, config.seed + it.index)}"} for it in items]
        atomic_write_text(out / "prompts.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    state.wait_for_everyone()

    images_dir = out / "images"
    todo = [it for it in items if not (images_dir / image_name(it, config.seed + it.index)).is_file()]
    mine = todo[state.process_index :: state.num_processes]
    counter, handle = count_unet_rows(pipe.unet)
    started = time.perf_counter()
    columns = (TextColumn("sample"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not state.is_main_process) as bar:
        task = bar.add_task("sample", total=len(mine))
        for lo in range(0, len(mine), config.batch_size):
            batch = mine[lo : lo + config.batch_size]
            seeds = [config.seed + it.index for it in batch]
            try:
                pixels = to_uint8(generate(
                    pipe, [it.prompt for it in batch], seeds, steps=settings["steps"], guidance=settings["guidance"],
                    size=settings["size"], negative_prompt=config.negative_prompt,
                ))
            except Exception as error:
                if config.compile and (failure := compile_failure(error)):
                    raise failure from error
                raise
            for it, seed, px in zip(batch, seeds, pixels):
                save_image(images_dir / image_name(it, seed), px)
            bar.advance(task, len(batch))
    handle.remove()
    elapsed = time.perf_counter() - started
    state.wait_for_everyone()
    if not state.is_main_process:
        return out / MANIFEST

    paths = [images_dir / image_name(it, config.seed + it.index) for it in items]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SnapdistillError(f"{missing[0]}: image missing after sampling; rerun to fill it in")
    save_grid(paths[:GRID_IMAGES], out / "grid.png")
    rendered = len(mine)
    return write_manifest(
        out,
        stage="sample",
        config={**asdict(config), **settings, "device": device},
        inputs=[input_entry(model.path, spec=config.model)]
        + ([input_entry(Path(config.decoder).parent, role="decoder")] if config.decoder else []),
        outputs={"images": "images", "prompts": "prompts.jsonl", "grid": "grid.png"},
        counts={"images": len(items), "rendered_now": rendered, "skipped_present": len(items) - len(todo),
                "processes": state.num_processes},
        metrics={
            "unet_calls_per_image": counter[0] / rendered if rendered else previous.get("unet_calls_per_image"),
            "s_per_image": elapsed / rendered if rendered else previous.get("s_per_image"),
        },
        seed=config.seed,
    )
