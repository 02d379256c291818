"""Sampler choice: diffusers schedulers by name, always with an explicit timestep spacing.

DPMSolverMultistepScheduler defaults to `linspace` spacing, and SD 1.5's own config says `leading`;
the spacing changes which timesteps are visited, so it is always set here and recorded in manifests.
"""

from __future__ import annotations

from collections.abc import Mapping

from snapdistill.errors import SnapdistillError

SPACINGS = ("trailing", "leading", "linspace")


def _dpmsolver_pp(config: Mapping, spacing: str):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing=spacing
    )


def _ddim(config: Mapping, spacing: str):
    from diffusers import DDIMScheduler

    # Latents are never clipped: a config without clip_sample (DPM-Solver's, the toy teacher's) would otherwise
    # get DDIM's default True, which clips x0 to [-1, 1] and ruins latent-space sampling.
    return DDIMScheduler.from_config(config, timestep_spacing=spacing, clip_sample=False)


def _euler(config: Mapping, spacing: str):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(config, timestep_spacing=spacing)


def _lcm(config: Mapping, spacing: str):
    from diffusers import LCMScheduler

    # LCMScheduler picks its timesteps from its own N-point grid (original_inference_steps); the spacing is
    # recorded but does not move them.
    return LCMScheduler.from_config(config, timestep_spacing=spacing, clip_sample=False)


SCHEDULERS = {"dpmsolver++": _dpmsolver_pp, "ddim": _ddim, "euler": _euler, "lcm": _lcm}


def make_scheduler(name: str, config: Mapping, *, spacing: str = "trailing"):
    """A fresh scheduler `name` on the training schedule of `config` (a diffusers scheduler config)."""
    if name not in SCHEDULERS:
        raise SnapdistillError(f"unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}")
    if spacing not in SPACINGS:
        raise SnapdistillError(f"unknown timestep spacing '{spacing}'; choose one of {', '.join(SPACINGS)}")
    return SCHEDULERS[name](config, spacing)


def describe(scheduler) -> dict:
    """What a manifest records about a scheduler: class, spacing, prediction type and solver."""
    cfg = scheduler.config
    out = {
        "class": type(scheduler).__name__,
        "timestep_spacing": cfg.get("timestep_spacing"),
        "prediction_type": cfg.get("prediction_type"),
    }
    if "algorithm_type" in cfg:
        out["algorithm_type"] = cfg["algorithm_type"]
        out["solver_order"] = cfg.get("solver_order")
    return out
