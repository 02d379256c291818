"""Rendering shared by the stages: a batch of images per call, and the settings a model is sampled with.

`generate` gives every image its own CPU `torch.Generator`, so an image depends only on (prompt, seed).
`resolve_settings` fills in a model's sampling defaults (steps, scheduler, size). The `sample` stage
(`snapdistill.sampling.stage`), the distillation stages, `inspect`, `eval` and the bench use these.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from snapdistill.errors import SnapdistillError
from snapdistill.models.loading import read_student_info
from snapdistill.sampling.schedulers import describe, make_scheduler

if TYPE_CHECKING:
    from snapdistill.sampling.stage import SampleConfig

DEFAULT_TEACHER_STEPS = 20


def model_fingerprint(path: Path) -> str:
    """A cheap identity of the model's files (relative path, size, mtime), so that images of a model retrained
    in place are never mistaken for the new model's. Hashing the weights themselves would read gigabytes."""
    import hashlib

    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


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


def resolve_settings(config: SampleConfig, pipe, model_path: Path) -> tuple[dict, object]:
    """Fill in defaults (steps, scheduler, size) from the model; return (settings, scheduler)."""
    info = read_student_info(model_path) or {}
    steps = config.steps if config.steps is not None else info.get("num_inference_steps", DEFAULT_TEACHER_STEPS)
    # A step-distilled student is sampled with its own scheduler, on the grid it was trained on.
    name = config.scheduler or ("own" if info.get("num_inference_steps") else "dpmsolver++")
    scheduler = pipe.scheduler if name == "own" else make_scheduler(name, pipe.scheduler.config, spacing=config.spacing)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    # The seed's benchmark is 512 px; models trained smaller (the toy world) keep their native size.
    size = config.size or min(native, 512)
    if size <= 0 or size % pipe.vae_scale_factor:
        raise SnapdistillError(f"--size must be a positive multiple of {pipe.vae_scale_factor}, got {size}")
    settings = {
        "model_path": str(model_path.resolve()),
        "model_fingerprint": model_fingerprint(model_path),
        "steps": int(steps),
        "guidance": float(config.guidance),
        "size": int(size),
        "scheduler": {"name": name, **describe(scheduler)},
        "negative_prompt": config.negative_prompt,
        "dtype": config.dtype,
    }
    return settings, scheduler
