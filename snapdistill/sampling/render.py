"""Rendering shared by the stages: a batch of images per call, and the settings a model is sampled with.

`generate` gives every image its own CPU `torch.Generator`, so an image depends only on (prompt, seed).
`resolve_settings` fills in a model's sampling defaults (steps, scheduler, size). The `sample` stage
(`snapdistill.sampling.stage`), the distillation stages, `inspect`, `eval` and the bench use these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from snapdistill.errors import SnapdistillError
from snapdistill.models.loading import model_fingerprint, native_size
from snapdistill.models.student_record import StudentRecord
from snapdistill.sampling.config import SampleConfig
from snapdistill.sampling.schedulers import describe, make_scheduler

DEFAULT_TEACHER_STEPS = 20


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] to uint8, rounding as diffusers' `numpy_to_pil` does."""
    return (images * 255).round().astype("uint8")


def count_unet_rows(unet) -> tuple[list[int], object]:
    """Attach a hook counting UNet batch rows; returns (counter, handle)."""
    counter = [0]

    def hook(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        counter[0] += sample.shape[0]

    return counter, unet.register_forward_pre_hook(hook, with_kwargs=True)


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], *, steps: int, guidance: float, size: int,
             negative_prompt: str | None = None) -> np.ndarray:
    """Render one batch: float images [B, H, W, 3] in [0, 1], one CPU generator per image."""
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    result = pipe(
        prompt=list(prompts),
        negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=size,
        width=size,
        generator=generators,
        output_type="np",
    )
    return result.images


def off_grid(config: SampleConfig, record: StudentRecord | None) -> str | None:
    """Why `config` samples a step-distilled student off the grid it was trained on; None when it does not."""
    if record is None or not record.step_distilled:
        return None  # a teacher or a stage-1 student takes any steps and scheduler
    asked = []
    if config.steps is not None and not record.on_grid(config.steps):
        asked.append(f"--steps {config.steps}")
    if config.scheduler not in (None, "own"):
        asked.append(f"--scheduler {config.scheduler}")
    if not asked:
        return None
    if record.mode == "consistency":
        return (f"{' and '.join(asked)} samples off the grid this student was trained on: 1 to "
                f"{record.original_inference_steps} steps of its own LCMScheduler")
    return (f"{' and '.join(asked)} samples off the grid this student was trained on: {record.num_inference_steps} "
            f"steps of its own scheduler at timesteps {record.timesteps}")


def check_grid(config: SampleConfig, record: StudentRecord | None) -> str | None:
    """Refuse an off-grid request unless `allow_off_grid`; return the warning when it is allowed."""
    reason = off_grid(config, record)
    if reason and not config.allow_off_grid:
        raise SnapdistillError(f"{reason}; leave --steps and --scheduler out, or pass --allow-off-grid")
    return reason


DEFAULT_GUIDANCE = 7.5


def default_guidance(record: StudentRecord | None) -> float:
    """The guidance scale a model is sampled at unless asked: the one its record gives (a dmd generator, its
    guidance baked in, is sampled at 1), else 7.5."""
    return record.guidance if record is not None and record.guidance is not None else DEFAULT_GUIDANCE


def resolve_settings(config: SampleConfig, pipe, model_path: Path) -> tuple[dict, object]:
    """Fill in defaults (steps, scheduler, size) from the model; return (settings, scheduler).

    `off_grid` records whether a step-distilled student is sampled off its training grid (`check_grid` decides
    whether that is allowed), with the reason as `warning`.
    """
    record = StudentRecord.read(model_path)
    own_steps = record.num_inference_steps if record else None
    steps = config.steps if config.steps is not None else (own_steps or DEFAULT_TEACHER_STEPS)
    # A step-distilled student is sampled with its own scheduler, on the grid it was trained on.
    name = config.scheduler or ("own" if own_steps else "dpmsolver++")
    scheduler = pipe.scheduler if name == "own" else make_scheduler(name, pipe.scheduler.config, spacing=config.spacing)
    native = native_size(pipe)
    # The seed's benchmark is 512 px; models trained smaller (the toy world) keep their native size.
    # A student trained at --resolution is sampled there.
    size = config.size or (record.resolution if record and record.resolution else min(native, 512))
    if size <= 0 or size % pipe.vae_scale_factor:
        raise SnapdistillError(f"--size must be a positive multiple of {pipe.vae_scale_factor}, got {size}")
    settings = {
        "model_path": str(model_path.resolve()),
        "model_fingerprint": model_fingerprint(model_path),
        "steps": int(steps),
        "guidance": float(default_guidance(record) if config.guidance is None else config.guidance),
        "size": int(size),
        "scheduler": {"name": name, **describe(scheduler)},
        "negative_prompt": config.negative_prompt,
        "dtype": config.dtype,
        "off_grid": False,
    }
    if reason := off_grid(config, record):
        settings.update(off_grid=True, warning=reason)
    return settings, scheduler
