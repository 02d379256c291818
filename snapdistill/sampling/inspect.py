"""What a model costs: UNet and decoder parameters, UNet calls per image, and the measured seconds per image,
per UNet call and per decode."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from snapdistill.errors import SnapdistillError
from snapdistill.models.loading import default_device, load_pipeline, resolve_dtype, resolve_model
from snapdistill.models.small_decoder import decoder_parameters, to_pixels
from snapdistill.sampling.config import SampleConfig
from snapdistill.sampling.render import count_unet_rows, generate, resolve_settings
from snapdistill.sampling.stage import use_decoder

TIMING_PROMPT = "a red circle on the left and a blue square at the top, white background"


@dataclass
class InspectConfig:
    model: str                       # teacher name, pipeline folder or checkpoint file
    steps: int | None = None         # None: the student's recorded count, else 20 (as `sample`)
    guidance: float | None = None    # None: as `sample` (the student's recorded scale, else 7.5)
    batch_size: int = 4              # images in the timed batch (copies of TIMING_PROMPT) ...
    prompts: list[str] | None = None  # ... unless prompts are given
    size: int | None = None          # None: as `sample` (512, or the model's native size when smaller)
    dtype: str = "fp32"
    device: str | None = None
    allow_download: bool = False
    decoder: Path | None = None      # a distill-decoder OUT/decoder folder used instead of the model's VAE


def repeated_seconds(fn, repeats: int = 3) -> list[float]:
    """Wall-clock seconds of each of `repeats` calls of `fn()`, after one warm-up call."""
    fn()
    values = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        values.append(time.perf_counter() - tick)
    return values


def fastest_runs(fns: dict, repeats: int = 25, *, warmup: bool = True) -> dict:
    """{name: (the fastest wall-clock seconds of `fns[name]()` over `repeats` rounds, what that call returned)},
    after one warm-up call of each (`warmup=False`: the caller warmed them up).
    The calls alternate within each round, so a slow spell of the machine falls on every contender alike, and
    the minimum is kept because other activity only ever adds time (timeit's reasoning), as in the bench's
    seconds per image."""
    for fn in fns.values() if warmup else ():
        fn()
    best = {name: (float("inf"), None) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            tick = time.perf_counter()
            value = fn()
            seconds = time.perf_counter() - tick
            if seconds < best[name][0]:
                best[name] = (seconds, value)
    return best


def fastest_seconds(fns: dict, repeats: int = 25, *, warmup: bool = True) -> dict:
    """The fastest wall-clock seconds of each `fns[name]()` (`fastest_runs`)."""
    return {name: seconds for name, (seconds, _) in fastest_runs(fns, repeats, warmup=warmup).items()}


def median_seconds(fn, repeats: int = 3) -> float:
    """Median wall-clock seconds of `fn()` after one warm-up call."""
    import statistics

    return statistics.median(repeated_seconds(fn, repeats))


def unet_inputs(pipe, batch: int, size: int, unet=None) -> dict:
    """Keyword arguments for one call of `unet` (default `pipe.unet`) on `batch` latents of a `size` px image, as
    the pipeline passes them: seeded noise, zero text states, a guidance embedding where the UNet takes one, and a
    0-dim timestep (a compiled UNet would compile again for another shape)."""
    unet = pipe.unet if unet is None else unet
    side = size // pipe.vae_scale_factor
    on = dict(device=pipe.device, dtype=unet.dtype)
    w_dim = unet.config.time_cond_proj_dim
    noise = torch.randn(batch, unet.config.in_channels, side, side, generator=torch.Generator().manual_seed(0))
    return {"sample": noise.to(**on), "timestep": torch.tensor(500, device=pipe.device),
            "encoder_hidden_states": torch.zeros(batch, pipe.tokenizer.model_max_length,
                                                 unet.config.cross_attention_dim, **on),
            "timestep_cond": torch.zeros(batch, w_dim, **on) if w_dim else None}


@torch.no_grad()
def time_parts(pipe, batch: int, size: int) -> dict:
    """Seconds per image of one decode and of one UNet call (a batch of `batch` latents, warmed up)."""
    inputs = unet_inputs(pipe, batch, size)
    decode = median_seconds(lambda: to_pixels(pipe.vae, inputs["sample"])) / batch
    unet = median_seconds(lambda: pipe.unet(**inputs)) / batch
    return {"s_per_decode": decode, "s_per_unet_call": unet}


def unet_calls_per_image(steps: int, guidance: float, time_cond_proj_dim: int | None) -> int:
    """steps × 2 with classifier-free guidance, else steps. As in diffusers' StableDiffusionPipeline, CFG runs
    when guidance > 1 and the UNet takes no guidance embedding (`time_cond_proj_dim`)."""
    cfg = guidance > 1 and time_cond_proj_dim is None
    return steps * (2 if cfg else 1)


def time_sampling(pipe, prompts: list[str], *, steps: int, guidance: float, size: int) -> dict:
    """Warm up on one image, then time one batch of `prompts`: s/image and UNet rows per image."""
    generate(pipe, prompts[:1], [0], steps=steps, guidance=guidance, size=size)
    counter, handle = count_unet_rows(pipe.unet)
    started = time.perf_counter()
    try:
        generate(pipe, prompts, list(range(len(prompts))), steps=steps, guidance=guidance, size=size)
    finally:
        handle.remove()
    return {"s_per_image": (time.perf_counter() - started) / len(prompts),
            "measured_unet_calls_per_image": counter[0] / len(prompts)}


def training_memory(pipe, *, batch_size: int, size: int, mixed_precision: str) -> dict:
    """Bytes per process of distilling this UNet (a same-size student, AdamW, EMA) at this batch and size, by part,
    with and without gradient checkpointing (see `snapdistill.models.memory`)."""
    from snapdistill.models.memory import estimate_memory, saved_activation_bytes

    student = sum(p.numel() for p in pipe.unet.parameters())
    frozen = student + sum(p.numel() for part in (pipe.vae, pipe.text_encoder) for p in part.parameters())
    acts = {ckpt: saved_activation_bytes(pipe.unet.config, size=size, vae_factor=pipe.vae_scale_factor,
                                         checkpointing=ckpt) for ckpt in (False, True)}
    out = {}
    for ckpt in (False, True):
        e = estimate_memory(student_params=student, frozen_params=frozen, mixed_precision=mixed_precision,
                            optimizer="adamw", ema=True, batch_size=batch_size, activation_bytes=acts,
                            gradient_checkpointing=ckpt)
        out["checkpointed" if ckpt else "plain"] = {name: value for name, value in e.rows()}
    return out


def inspect_model(config: InspectConfig) -> dict:
    """Load the model, count its UNet parameters and calls per image, and time a batch."""
    prompts = config.prompts or [TIMING_PROMPT] * config.batch_size
    if not prompts:
        raise SnapdistillError(f"--batch-size must be positive, got {config.batch_size}")
    if config.steps is not None and config.steps <= 0:
        raise SnapdistillError(f"--steps must be a positive integer, got {config.steps}")
    device = config.device or default_device()
    model = resolve_model(config.model, allow_download=config.allow_download)
    pipe = load_pipeline(model, dtype=resolve_dtype(config.dtype, device), device=device,
                         allow_download=config.allow_download)
    sample_config = SampleConfig(model=config.model, out=Path("."), steps=config.steps, guidance=config.guidance,
                                 size=config.size)
    settings, pipe.scheduler = resolve_settings(sample_config, pipe, model.path)
    decoder = use_decoder(pipe, model.path, config.decoder)
    unet = pipe.unet.config
    guidance = settings["guidance"]
    timing = time_sampling(pipe, prompts, steps=settings["steps"], guidance=guidance, size=settings["size"])
    memory = training_memory(pipe, batch_size=len(prompts), size=settings["size"],
                             mixed_precision={"fp32": "no"}.get(config.dtype, config.dtype))
    return {
        "model": str(model.path),
        "training_memory": memory,
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        "steps": settings["steps"],
        "guidance": guidance,
        "guidance_embedding": unet.time_cond_proj_dim is not None,
        "unet_calls_per_image": unet_calls_per_image(settings["steps"], guidance, unet.time_cond_proj_dim),
        **timing,
        "decoder": decoder.get("decoder"),
        "decoder_parameters": decoder_parameters(pipe.vae),
        **time_parts(pipe, len(prompts), settings["size"]),
        "size": settings["size"],
        "scheduler": settings["scheduler"]["class"],
        "batch_size": len(prompts),
        "device": device,
        "dtype": config.dtype,
    }
