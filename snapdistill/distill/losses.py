"""The distillation losses: small callables `loss(student_unet, batch, gen)` that return the loss *per sample*.

As in EDM's `loss(net, images, labels)`, the network is an argument: the training loop passes the module it
optimises (maybe DDP-wrapped) on every call, and the loss holds only how to read it (`StudentKind`).

Every loss compares predictions through `Prediction` (x0 / eps / any parametrisation), so none of
them branches on the teacher's or student's prediction type. Reduction, scaling and accumulation
stay in the training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from snapdistill.diffusion import (
    NoiseSchedule,
    Prediction,
    alpha_sigma_at,
    ddim_step,
    dpm_solver_pp_step,
    noisy,
    step_h,
)
from snapdistill.diffusion.ddim import eps_for_landing, v_for_landing, x0_for_landing
from snapdistill.distill.grid import teacher_points
from snapdistill.distill.guided import Guided, StudentKind
from snapdistill.errors import SnapdistillError


@dataclass
class Batch:
    """Clean latents x0 [B,C,h,w], their caption embeddings [B,L,D] and the empty caption's [1,L,D]."""

    latents: torch.Tensor
    cond: torch.Tensor
    uncond: torch.Tensor


class Space(NamedTuple):
    """One loss space: how to read a Prediction in it, the landing target in it, and its weight from SNR."""

    read: Callable[[Prediction], torch.Tensor]
    target: Callable[..., torch.Tensor]               # (z, z_next, alpha, sigma, alpha_next, sigma_next) -> target
    weight: Callable[[torch.Tensor], torch.Tensor]    # SNR [B] -> weight [B]


# x0 uses the truncated-SNR weighting max(SNR, 1) of progressive distillation; eps and v are plain MSE
# (for a fixed z, MSE in eps is SNR·MSE in x0 and MSE in v is (1 + SNR)·MSE in x0).
SPACES = {
    "x0": Space(read=lambda p: p.x0, target=x0_for_landing, weight=lambda snr: snr.clamp(min=1.0)),
    "eps": Space(read=lambda p: p.eps, target=eps_for_landing, weight=torch.ones_like),
    "v": Space(read=lambda p: p.as_type("v_prediction"), target=v_for_landing, weight=torch.ones_like),
}


SOLVERS = ("ddim", "dpmsolver++")


def check_solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise SnapdistillError(f"unknown --teacher-solver '{solver}'; choose one of {', '.join(SOLVERS)}")
    return solver


def check_space(space: str) -> str:
    if space not in SPACES:
        raise SnapdistillError(f"unknown loss space '{space}'; choose one of {', '.join(SPACES)}")
    return space


def check_guidance_range(guidance_range: tuple[float, float], flag: str = "--guidance-range") -> None:
    """Refuse a guidance range that is not 1 <= low <= high (nan included)."""
    lo, hi = guidance_range
    if not 1.0 <= lo <= hi:
        raise SnapdistillError(f"{flag} must satisfy 1 <= low <= high, got {lo}-{hi}")


def space_mse(space: str, pred: Prediction, target: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
    """weight(SNR)·mean((pred − target)²) per sample, with pred read in `space`."""
    err = (SPACES[space].read(pred).float() - target.float()) ** 2
    return err.mean(dim=tuple(range(1, err.ndim))) * SPACES[space].weight(snr)


def uniform(gen: torch.Generator, n: int, lo: float, hi: float, device) -> torch.Tensor:
    """n draws of U(lo, hi) from `gen`."""
    return (lo + (hi - lo) * torch.rand(n, generator=gen)).to(device)


@dataclass
class GuidanceLoss:
    """Stage 1: the w-conditioned student at (z_t, w = s − 1) matches the teacher's CFG output at s."""

    teacher: Guided
    student: StudentKind
    schedule: NoiseSchedule
    guidance_range: tuple[float, float] = (2.0, 14.0)
    space: str = "x0"

    def __call__(self, student_unet: torch.nn.Module, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        x0 = batch.latents
        n = x0.shape[0]
        t = torch.randint(0, self.schedule.num_train_timesteps, (n,), generator=gen).to(x0.device)
        z, _, _, _ = noisy(self.schedule, x0, t, gen)
        s = uniform(gen, n, *self.guidance_range, x0.device)
        with torch.no_grad():
            target = self.teacher(z, t, batch.cond, batch.uncond, s)
        pred = self.student.on(student_unet, self.schedule)(z, t, batch.cond, batch.uncond, s)
        return space_mse(self.space, pred, SPACES[self.space].read(target), self.schedule.snr(t).to(x0.device))


@dataclass
class StepLoss:
    """Stage 2: one student step t → t'' lands where `substeps` teacher DDIM steps land.

    With probability `cfg_prob` a batch is CFG-aware (SnapFusion §4.2): teacher and student are both
    guided at s ~ U(cfg_range); otherwise both run at s = 1 (the conditional model; captions dropped
    in the data train the unconditional one). A student that takes w is always distilled at a sampled
    s, fed to both as the w embedding, so the two terms coincide for it.

    `gamma` > 0 adds the original denoising loss on real data (x0 and eps of the sample itself, at s = 1):
    per sample i, loss_i + gamma·ori_i·(loss_i / ori_i), the ratio taken without gradient. So the term has
    sample i's distillation loss as its size and the denoising loss's gradient as its direction, and sample i
    depends on no other sample of the batch.
    """

    teacher: Guided
    student: StudentKind
    schedule: NoiseSchedule
    grid: list[int]                   # the student's timesteps and its final landing point
    substeps: int                     # teacher DDIM steps per student step (N / M)
    final_alpha_cumprod: float
    cfg_prob: float = 0.1
    cfg_range: tuple[float, float] = (2.0, 14.0)
    space: str = "x0"
    gamma: float = 0.0
    solver: str = "ddim"              # the teacher's landing solver: ddim, or dpmsolver++ (2M within the landing)

    def _scales(self, n: int, gen: torch.Generator, device) -> torch.Tensor:
        cfg_aware = bool(torch.rand(1, generator=gen) < self.cfg_prob)
        draws = uniform(gen, n, *self.cfg_range, device)
        return draws if (cfg_aware or self.student.takes_w) else torch.ones(n, device=device)

    @torch.no_grad()
    def teacher_landing(self, z, t, t_next, batch: Batch, s) -> torch.Tensor:
        """z'' after `substeps` guided teacher steps from z at t to t_next (per sample): DDIM steps, or
        DPM-Solver++ steps (the first of first order, the rest 2M on the landing's own history)."""
        points = torch.tensor([teacher_points(int(a), int(b), self.substeps)
                               for a, b in zip(t.tolist(), t_next.tolist())], device=z.device)
        x0_prev = h_prev = None
        for k in range(self.substeps):  # k = 0 is at the student's (z, t): feature KD matches that call
            pred = self.teacher(z, points[:, k], batch.cond, batch.uncond, s)
            a2, s2 = alpha_sigma_at(self.schedule, self.final_alpha_cumprod, points[:, k + 1])
            if self.solver == "ddim":
                z = ddim_step(x0=pred.x0, eps=pred.eps, alpha_next=a2, sigma_next=s2).to(z.dtype)
                continue
            a, sg = alpha_sigma_at(self.schedule, self.final_alpha_cumprod, points[:, k])
            z = dpm_solver_pp_step(z=z.float(), x0=pred.x0.float(), alpha=a, sigma=sg, alpha_next=a2, sigma_next=s2,
                                   x0_prev=x0_prev, h_prev=h_prev).to(z.dtype)
            x0_prev, h_prev = pred.x0.float(), step_h(alpha=a, sigma=sg, alpha_next=a2, sigma_next=s2)
        return z

    def __call__(self, student_unet: torch.nn.Module, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        student = self.student.on(student_unet, self.schedule)
        x0 = batch.latents
        n, dev = x0.shape[0], x0.device
        grid = torch.tensor(self.grid, device=dev)
        i = torch.randint(0, len(self.grid) - 1, (n,), generator=gen).to(dev)
        t, t_next = grid[i], grid[i + 1]
        z, eps, alpha, sigma = noisy(self.schedule, x0, t, gen)
        s = self._scales(n, gen, dev)
        z_next = self.teacher_landing(z, t, t_next, batch, s)
        a2, s2 = alpha_sigma_at(self.schedule, self.final_alpha_cumprod, t_next)
        space = SPACES[self.space]
        target = space.target(z=z.float(), z_next=z_next.float(), alpha=alpha, sigma=sigma, alpha_next=a2,
                              sigma_next=s2)
        snr = self.schedule.snr(t).to(dev)
        loss = space_mse(self.space, student(z, t, batch.cond, batch.uncond, s), target, snr)
        if self.gamma > 0:
            ones = torch.ones(n, device=dev)
            truth = Prediction(x0=x0.float(), eps=eps.float(), output=x0, prediction_type="sample",
                               alpha=alpha, sigma=sigma)
            ori = space_mse(self.space, student(z, t, batch.cond, batch.uncond, ones), space.read(truth), snr)
            # Per sample: ori_i scaled to loss_i's size (a constant factor, so the gradient is ori's, rescaled).
            loss = loss + self.gamma * ori * (loss.detach() / ori.detach().clamp(min=1e-12))
        return loss
