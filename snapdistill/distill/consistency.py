"""Latent consistency distillation (Luo et al. 2023, "LCM"): a w-conditioned student f(z, t, w) that maps any
point of the teacher's guided ODE trajectory to its start, sampled by diffusers' `LCMScheduler`.

The conventions are the scheduler's, so a student trained here samples there on exactly its training grid:
- the N timesteps of the skipping-step grid are t_i = i·k − 1 for i = 1…N, with k = T // N (N is the scheduler's
  `original_inference_steps`); `LCMScheduler.set_timesteps(M)` samples M of them;
- the consistency function is f(z, t) = c_skip(t)·z + c_out(t)·x0(z, t), with the boundary scalings
  c_skip = σ_d²/((t·s)² + σ_d²) and c_out = t·s/sqrt((t·s)² + σ_d²) of the integer timestep t, σ_d = 0.5 and
  s = `timestep_scaling` (10), so that f(z, 0) = z.

A training step: z at t_i; the teacher, guided at scale s (CFG on [uncond; cond], or w embedded when it is a
stage-1 student), takes one DDIM step to t_i − k (the skipping-step solver); the loss compares the online
student's f at (z, t_i) with the target network's f at the solver's landing point (no gradient). The target
network is an EMA of the online student, updated after every optimisation step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from snapdistill.diffusion import NoiseSchedule, Prediction, ddim_step, noisy, per_sample
from snapdistill.distill.guided import Guided, StudentKind
from snapdistill.distill.losses import Batch, uniform
from snapdistill.errors import SnapdistillError

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def boundary_scalings(t: torch.Tensor, *, sigma_data: float = SIGMA_DATA,
                      timestep_scaling: float = TIMESTEP_SCALING) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) = (σ_d²/((t·s)² + σ_d²), t·s/sqrt((t·s)² + σ_d²)) of integer timesteps t [B]."""
    scaled = torch.as_tensor(t).double() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2).sqrt()
    return c_skip.float(), c_out.float()


def consistency_output(*, z: torch.Tensor, x0: torch.Tensor, c_skip: torch.Tensor,
                       c_out: torch.Tensor) -> torch.Tensor:
    """f = c_skip·z + c_out·x0."""
    return per_sample(c_skip, z) * z + per_sample(c_out, x0) * x0


def consistency_function(pred: Prediction, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """f(z, t) of a model whose prediction at (z, t) is `pred`: c_skip(t)·z + c_out(t)·x0."""
    c_skip, c_out = boundary_scalings(t)
    return consistency_output(z=z.float(), x0=pred.x0.float(), c_skip=c_skip.to(z.device), c_out=c_out.to(z.device))


def skipping_interval(num_train_timesteps: int, num_ddim_timesteps: int) -> int:
    """k = T // N: the teacher's solver skips k training timesteps (LCMScheduler's k)."""
    return num_train_timesteps // num_ddim_timesteps


def skip_grid(num_train_timesteps: int, num_ddim_timesteps: int) -> list[int]:
    """[k − 1, 2k − 1, …, N·k − 1]: the N timesteps consistency is trained on (LCMScheduler's original
    schedule, ascending)."""
    k = skipping_interval(num_train_timesteps, num_ddim_timesteps)
    return [i * k - 1 for i in range(1, num_ddim_timesteps + 1)]


def solver_step(pred: Prediction, schedule: NoiseSchedule, t_prev: torch.Tensor) -> torch.Tensor:
    """The skipping-step DDIM solver: z' = α(t')·x0 + σ(t')·eps, from a (guided) teacher prediction at t."""
    alpha, sigma = schedule.alpha_sigma(t_prev)
    return ddim_step(x0=pred.x0, eps=pred.eps, alpha_next=alpha.to(pred.x0.device),
                     sigma_next=sigma.to(pred.x0.device))


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, mu: float) -> None:
    """target ← μ·target + (1 − μ)·online, parameter by parameter (buffers are copied)."""
    for p_t, p_o in zip(target.parameters(), online.parameters(), strict=True):
        p_t.mul_(mu).add_(p_o.detach().to(p_t.dtype), alpha=1 - mu)
    for b_t, b_o in zip(target.buffers(), online.buffers(), strict=True):
        b_t.copy_(b_o)


def pseudo_huber(pred: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    """mean(sqrt((pred − target)² + c²) − c) per sample."""
    err = (pred.float() - target.float()) ** 2
    return ((err + c * c).sqrt() - c).mean(dim=tuple(range(1, err.ndim)))


def l2(pred: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    """mean((pred − target)²) per sample (c is unused)."""
    err = (pred.float() - target.float()) ** 2
    return err.mean(dim=tuple(range(1, err.ndim)))


DISTANCES = {"huber": pseudo_huber, "l2": l2}


@dataclass
class ConsistencyLoss:
    """d(f_θ(z, t, w), f_θ⁻(ẑ, t − k, w)) per sample, with ẑ the guided teacher's DDIM step from (z, t).

    `target` is the EMA target network, read through the student's kind (its prediction type and w input). The
    online student is called first at (z, t), then the teacher there: feature KD (`with_features`) pairs these
    two calls.
    """

    teacher: Guided
    student: StudentKind
    target: Guided
    schedule: NoiseSchedule
    num_ddim_timesteps: int = 50
    guidance_range: tuple[float, float] = (2.0, 14.0)
    distance: str = "huber"
    huber_c: float = 0.001

    def __call__(self, student_unet: torch.nn.Module, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        x0 = batch.latents
        n, dev = x0.shape[0], x0.device
        T = self.schedule.num_train_timesteps
        grid = torch.tensor(skip_grid(T, self.num_ddim_timesteps), device=dev)
        t = grid[torch.randint(0, len(grid), (n,), generator=gen).to(dev)]
        t_prev = (t - skipping_interval(T, self.num_ddim_timesteps)).clamp(min=0)
        z, _, _, _ = noisy(self.schedule, x0, t, gen)
        s = uniform(gen, n, *self.guidance_range, dev)
        online = consistency_function(self.student.on(student_unet, self.schedule)(z, t, batch.cond, batch.uncond, s),
                                      z, t)
        with torch.no_grad():
            z_prev = solver_step(self.teacher(z, t, batch.cond, batch.uncond, s), self.schedule, t_prev).to(z.dtype)
            target = consistency_function(self.target(z_prev, t_prev, batch.cond, batch.uncond, s), z_prev, t_prev)
        return DISTANCES[self.distance](online, target, self.huber_c)


def check_distance(name: str) -> str:
    if name not in DISTANCES:
        raise SnapdistillError(f"unknown --loss '{name}'; choose one of {', '.join(DISTANCES)}")
    return name


def lcm_scheduler(teacher_config: Mapping, *, num_ddim_timesteps: int, prediction_type: str):
    """The scheduler saved with a consistency student: diffusers' `LCMScheduler` on the teacher's training
    schedule, with N = `original_inference_steps` and the boundary scalings trained with. Latents are never
    clipped."""
    import inspect

    from diffusers import LCMScheduler

    # Only LCMScheduler's own keys: a DPM-Solver teacher's solver settings would be carried along unread.
    known = inspect.signature(LCMScheduler.__init__).parameters
    config = {k: v for k, v in teacher_config.items() if k in known}
    return LCMScheduler.from_config(config, original_inference_steps=num_ddim_timesteps,
                                    prediction_type=prediction_type, timestep_scaling=TIMESTEP_SCALING,
                                    clip_sample=False, thresholding=False)


def sampling_timesteps(scheduler, steps: int) -> list[int]:
    """The timesteps `scheduler` (an LCMScheduler) visits in `steps` steps: a subset of its training grid."""
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]
