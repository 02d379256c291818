"""The toy teacher as a shipped pipeline: its sampler, the stock `StableDiffusionPipeline` of its parts, fp16
storage, and the judge's measurement of what is shipped (`snapdistill toy teacher`)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from snapdistill.models.tiny import SD_SCHEDULER_CONFIG
from snapdistill.models.tokenizer import build_clip_tokenizer

# The sampler the shipped pipeline carries. The spacing is explicit and recorded (see DESIGN §3).
SAMPLER_CONFIG = {"algorithm_type": "dpmsolver++", "solver_order": 2, "timestep_spacing": "trailing"}


def sampler_scheduler(sampler: dict | None = None):
    """The DPM-Solver++ scheduler the toy teacher ships with (SD's schedule, explicit spacing)."""
    from diffusers import DPMSolverMultistepScheduler

    base = {k: v for k, v in SD_SCHEDULER_CONFIG.items() if k not in ("clip_sample", "set_alpha_to_one")}
    return DPMSolverMultistepScheduler(**{**base, **(sampler or SAMPLER_CONFIG)}, prediction_type="epsilon")


def build_pipeline(vae, text_encoder, unet, sampler: dict | None = None):
    """A stock `StableDiffusionPipeline` of the toy components (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=build_clip_tokenizer(),
        unet=unet.eval(),
        scheduler=sampler_scheduler(sampler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe, folder: Path) -> None:
    """Save a pipeline folder with all weights stored in fp16 (measured lossless for the toy models).

    Configs keep float32 as the load dtype, so stock `from_pretrained` gives a float32 pipeline.
    """
    folder = Path(folder)
    pipe.save_pretrained(folder)
    for name in ("unet", "text_encoder", "vae"):
        model = copy.deepcopy(getattr(pipe, name)).half()
        model.save_pretrained(folder / name)
    cfg_path = folder / "text_encoder" / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["dtype"] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def sample_images(pipe, prompts: list[str], *, steps: int, guidance: float, seed: int = 0, batch: int = 256):
    """Images (N, 3, 32, 32) in [-1, 1]; image i depends only on prompts[i] and seed + i."""
    out = []
    pipe.set_progress_bar_config(disable=True)
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        with torch.no_grad():
            img = pipe(
                chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt"
            ).images
        out.append(img * 2 - 1)
    return torch.cat(out)


EVAL_SETTINGS = {"s16_g7.5": (16, 7.5), "s16_g1.0": (16, 1.0), "s4_g7.5": (4, 7.5)}


def evaluate_pipeline(
    pipe, judge, *, n: int = 1024, seed: int = 0, settings=EVAL_SETTINGS, log=print
) -> dict:
    """Judge scores (exact, acc, per attribute) of toy val prompts sampled at each (steps, guidance)."""
    from snapdistill.toy.judge import judge_images
    from snapdistill.toy.world import toy_val_prompts

    prompts = toy_val_prompts(n)
    out = {}
    for name, (steps, guidance) in settings.items():
        t0 = time.time()
        scores = judge_images(
            judge, sample_images(pipe, prompts, steps=steps, guidance=guidance, seed=seed), prompts
        )
        scores["s_per_image"] = round((time.time() - t0) / n, 4)
        out[name] = scores
        log(f"eval {name}: exact {scores['exact']:.4f} acc {scores['acc']:.4f} {scores['per_attribute']}")
    return out
