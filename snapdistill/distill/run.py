"""Run folders of the distillation stages: refusing clobbers, resuming, validation grids, model cards.

Layout: `config.json` (the resolved config, written before training), `checkpoints/` (resume state),
`stats.jsonl`, `val/step-*.png` (teacher row above student row, same prompts and seeds), `student/`
(a diffusers pipeline folder), `README.md` (model card) and, last, `manifest.json`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from snapdistill.distill.checkpoint_files import check_recorded
from snapdistill.distill.loop import check_checkpoint, latest_checkpoint, trainer_state
from snapdistill.errors import SnapdistillError
from snapdistill.jsonl import read_json_object
from snapdistill.manifest import MANIFEST, atomic_write_text, refuse_other_settings, settings_diff
from snapdistill.models.student_record import StudentRecord
from snapdistill.outdir import prepare_out
from snapdistill.sampling.render import to_uint8

CONFIG = "config.json"
# Settings that may change on resume without changing what is trained.
RESUMABLE = ("max_minutes", "resume", "overwrite", "device", "checkpoint_every", "validate_every", "dry_run",
             "report_to", "val_prompts", "allow_lost")


def _flat(config: dict, prefix: str = "") -> dict:
    """Nested settings as {"a.b.c": value}, without those that may change on resume."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif key not in RESUMABLE:
            out[prefix + key] = value
    return out


def prepare_run(out: Path, config: dict, *, resume: str | None, overwrite: bool) -> None:
    """Check `out` against the request (finished run, unfinished run, resume settings); write config.json.

    `out` has already been checked apart from the teacher and the shards: both stages call `load_teacher` first.
    """
    out = Path(out)
    if overwrite and out.is_dir():
        shutil.rmtree(out)
    if (out / MANIFEST).is_file():
        raise SnapdistillError(f"{out}: holds a finished run; pass --overwrite or choose another --out")
    if resume:
        old_path = out / CONFIG if resume == "latest" else Path(resume).parents[1] / CONFIG
        if not old_path.is_file():
            raise SnapdistillError(f"{old_path}: no run to resume (config.json missing)")
        old = read_json_object(old_path, "run config (config.json)")
        diff = settings_diff(_flat(old), _flat(json_ready(config)))
        refuse_other_settings(f"--resume: {old_path.parent} holds a run", diff,
                              "resume with the same settings, or start again with --overwrite")
    elif any(out.rglob("checkpoints")) if out.is_dir() else False:
        raise SnapdistillError(f"{out}: holds an unfinished run; pass --resume to continue it or --overwrite")
    prepare_out(out)
    atomic_write_text(out / CONFIG, json.dumps(json_ready(config), indent=2) + "\n")


def resume_point(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume `run_dir` from: None without --resume or before its first checkpoint."""
    if not resume:
        return None
    checkpoint = latest_checkpoint(run_dir) if resume == "latest" else Path(resume)
    if checkpoint is None:
        return None
    check_checkpoint(checkpoint)
    check_recorded(checkpoint)  # every file as written: sizes and hashes from its files.json
    trainer_state(checkpoint)  # its JSON now, before any model is built: one line when it does not parse
    return checkpoint


def json_ready(value: Any) -> Any:
    """`value` as plain JSON types (paths and tuples become strings and lists)."""
    return json.loads(json.dumps(value, default=str))


def first_captions(shards: list[str], n: int) -> list[str]:
    """The first n captions of the first shard(s): the fixed validation prompts of a run."""
    import webdataset as wds

    captions = []
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False, nodesplitter=None):
        captions.append(sample["txt"].decode("utf-8"))
        if len(captions) == n:
            break
    return captions


def save_grid_rows(rows: list[np.ndarray], path: Path) -> np.ndarray:
    """One PNG: each row a batch of float images [B,H,W,3] side by side; returns the grid (uint8 [H,W,3])."""
    strips = [np.concatenate(list(to_uint8(r)), axis=1) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = np.concatenate(strips, axis=0)
    Image.fromarray(grid).save(path)
    return grid


def model_card(*, stage: str, config: dict[str, Any], result: dict[str, Any], record: StudentRecord) -> str:
    """The student's README.md: what it is, how to run it, the recipe and the figures."""
    steps = record.num_inference_steps
    if record.mode == "consistency":
        how = (f"{steps} steps (or any count up to {record.original_inference_steps}) with its own scheduler "
               "(LCMScheduler)")
    elif steps:
        how = f"{steps} steps with its own scheduler (trailing DDIM)"
    else:
        how = "any scheduler (DPM-Solver++ recommended)"
    guide = ("one UNet call per step: the guidance scale is an input (w = s − 1)"
             if record.guidance_embedding else "classifier-free guidance doubles each call")
    lines = [
        f"# snapdistill student ({stage})",
        "",
        f"A diffusers `StableDiffusionPipeline`; sample it with {how}; {guide}.",
        "",
        "```python",
        "from diffusers import StableDiffusionPipeline",
        "pipe = StableDiffusionPipeline.from_pretrained('student')",
        f"image = pipe('a red circle on the left', guidance_scale=7.5{f', num_inference_steps={steps}' if steps else ''}).images[0]",
        "```",
        "",
        "## Recipe",
        "",
        "```json",
        json.dumps(config, indent=2, default=str),
        "```",
        "",
        "## Figures (this run)",
        "",
        *[f"- {k}: {v}" for k, v in result.items()],
        "",
    ]
    return "\n".join(lines)
