"""Which timesteps a student is trained on: exactly those its DDIM sampler visits.

A student of M steps is sampled by diffusers' `DDIMScheduler` with `trailing` spacing, which steps
from t to t − T//M and lands, after the last step, on the final ᾱ (`set_alpha_to_one`). Training uses
that same sequence. It only chains up (each landing point is the next step's timestep) when M divides
T; for SD's T = 1000 and M = 16 it does not (937 → 875, then the UNet is called at 874), so such M
are refused rather than trained on timesteps the sampler never visits.
"""

from __future__ import annotations

from collections.abc import Mapping

from snapdistill.diffusion import NoiseSchedule
from snapdistill.errors import SnapdistillError

FINAL = -1  # the landing point after the last step: the scheduler's final ᾱ


def student_grid(scheduler_config: Mapping, steps: int) -> list[int]:
    """[t_0, …, t_{M−1}, FINAL]: the timesteps a trailing-DDIM sampler of `steps` steps visits."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(dict(scheduler_config), timestep_spacing="trailing")
    sched.set_timesteps(steps)
    visited = [int(t) for t in sched.timesteps]
    landing = [t - sched.config.num_train_timesteps // steps for t in visited]
    if landing[:-1] != visited[1:] or landing[-1] >= 0:
        raise SnapdistillError(
            f"a {steps}-step student cannot be sampled on its own grid: DDIM steps {visited[:3]}… land on "
            f"{landing[:3]}…; choose a step count that divides {sched.config.num_train_timesteps}"
        )
    return [*visited, FINAL]


def teacher_points(t: int, t_next: int, substeps: int) -> list[int]:
    """The `substeps + 1` points from t to t_next at which the teacher steps, evenly spaced in t."""
    span = t_next - t
    return [t + span * k // substeps for k in range(substeps)] + [t_next]


def final_alpha_cumprod(scheduler_config: Mapping, schedule: NoiseSchedule) -> float:
    """ᾱ after the last DDIM step: 1 with `set_alpha_to_one`, else ᾱ_0 (as diffusers' DDIMScheduler)."""
    return 1.0 if scheduler_config.get("set_alpha_to_one", True) else float(schedule.alphas_cumprod[0])

