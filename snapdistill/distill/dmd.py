"""Distribution matching distillation (Yin et al. 2024, "DMD" and "DMD2"): a one-step generator G trained so that
the distribution of its samples matches the teacher's, from prompts alone.

A generator step: G maps pure noise at the grid's first timestep (T − 1) to x; x is noised to z_t at a time t drawn
in [0.02 T, 0.98 T]; the real score is the teacher's x0 prediction there with CFG at the real-guidance scale, the
fake score the x0 prediction of a second network (the fake score) that tracks G's own distribution. The generator
gradient is

    grad = (fake_x0 − real_x0) / mean|x − real_x0|      (the mean per sample, over its elements)

and the generator's loss 0.5·||x − stopgrad(x − grad)||², whose gradient with respect to x is exactly grad. The fake
score network starts as a copy of the teacher and is trained with the ordinary denoising loss on G's samples
(detached), `fake_updates` times per generator step with its own optimiser (the two time-scale rule of DMD2). It is
a field of the route's state (`FakeScore`): the training loop checkpoints its weights and its optimiser's state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from snapdistill.diffusion import NoiseSchedule, Prediction, from_x0_eps, noisy
from snapdistill.distill.guided import Guided, StudentKind

SCORE_RANGE = (0.02, 0.98)   # the share of [0, T) the generator's score times are drawn from (DMD2's min/max step)
MIN_SCALE = 1e-8             # floor of the normaliser mean|x − real_x0| (0 only when G already draws the real x0)


@dataclass
class PromptBatch:
    """The caption embeddings [B,L,D] of a batch of prompts and the empty caption's [1,L,D]: all a prompt-only
    route reads (no latents: no image is decoded)."""

    cond: torch.Tensor
    uncond: torch.Tensor


def dmd_gradient(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """(fake_x0 − real_x0) / mean|x − real_x0|, the mean taken per sample over its elements (floored at MIN_SCALE)."""
    x, real_x0, fake_x0 = x.float(), real_x0.float(), fake_x0.float()
    scale = (x - real_x0).abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True).clamp(min=MIN_SCALE)
    return (fake_x0 - real_x0) / scale


def generator_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5·||x − stopgrad(x − grad)||² per sample: its gradient with respect to x is `grad`."""
    target = (x.detach().float() - grad.float()).detach()
    return 0.5 * ((x.float() - target) ** 2).sum(dim=tuple(range(1, x.ndim)))


def score_timesteps(gen: torch.Generator, n: int, num_train_timesteps: int,
                    score_range: tuple[float, float] = SCORE_RANGE) -> torch.Tensor:
    """n integer timesteps uniform in [int(lo·T), int(hi·T)] (both ends included), from `gen`."""
    lo, hi = (int(f * num_train_timesteps) for f in score_range)
    return torch.randint(lo, hi + 1, (n,), generator=gen)


def denoising_loss(pred: Prediction, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The ordinary denoising loss per sample, in the model's own output: mean((output − target)²), where the target
    is what a model of its prediction type should emit for (x0, eps) at the prediction's (α, σ)."""
    target = from_x0_eps(pred.prediction_type, x0=x0.float(), eps=eps.float(), alpha=pred.alpha, sigma=pred.sigma)
    err = (pred.output.float() - target) ** 2
    return err.mean(dim=tuple(range(1, err.ndim)))


class FakeScore:
    """The fake score network and its optimiser: the second network of the dmd route, part of the route's state.

    `unet` starts as a copy of the teacher; `kind` reads it (its prediction type; a w input is fed w = 0, the
    model without guidance). `update` takes one optimisation step of the denoising loss on G's samples.
    """

    def __init__(self, unet: torch.nn.Module, kind: StudentKind, schedule: NoiseSchedule, *, lr: float,
                 max_grad_norm: float = 1.0):
        self.unet, self.kind, self.schedule, self.max_grad_norm = unet, kind, schedule, max_grad_norm
        self.unet.train().requires_grad_(True)
        # Constant rate, no decay: the fake network keeps tracking a moving G (DMD2 trains it the same way).
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=lr, weight_decay=0.0)
        self.last_loss = float("nan")

    def predict(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> Prediction:
        """Its prediction at (z, t) without guidance (s = 1)."""
        return self.kind.on(self.unet, self.schedule)(z, t, cond, uncond, torch.ones(z.shape[0], device=z.device))

    def update(self, x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, gen: torch.Generator) -> float:
        """One AdamW step of the denoising loss on samples `x` (detached), t uniform in [0, T); returns the loss."""
        from snapdistill.dist import average_gradients

        x = x.detach()
        t = torch.randint(0, self.schedule.num_train_timesteps, (x.shape[0],), generator=gen).to(x.device)
        z, eps, _, _ = noisy(self.schedule, x, t, gen)
        loss = denoising_loss(self.predict(z, t, cond, uncond), x, eps).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.unet)  # several processes: one fake network, the mean of their gradients
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = float(loss.detach())
        return self.last_loss


@dataclass
class DMDLoss:
    """The dmd route's loss: `loss(generator_unet, PromptBatch, gen)` per sample, training the fake score on the way.

    One call: G draws x from noise (with gradient); the real and fake scores give the generator gradient at a noised
    copy of x; then the fake network takes `fake_updates` steps, the first on x (detached), the others on fresh
    samples of G without gradient. `generator_scale` is the scale G is fed when it takes w (its guidance baked in;
    None: G runs without guidance input).
    """

    real: Guided
    fake: FakeScore
    generator: StudentKind
    schedule: NoiseSchedule
    latent_shape: tuple[int, int, int]
    real_guidance: float = 1.5
    fake_updates: int = 5
    generator_scale: float = 1.0

    def start(self, n: int, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(pure noise [n, C, h, w], the timesteps T − 1 [n]) G starts from."""
        noise = torch.randn((n, *self.latent_shape), generator=gen).to(device)
        t = torch.full((n,), self.schedule.num_train_timesteps - 1, device=device, dtype=torch.long)
        return noise, t

    def sample(self, generator_unet: torch.nn.Module, batch: PromptBatch, gen: torch.Generator) -> torch.Tensor:
        """G's one-step samples x0 for the batch's prompts, from fresh noise."""
        n, dev = batch.cond.shape[0], batch.cond.device
        z, t = self.start(n, gen, dev)
        s = torch.full((n,), self.generator_scale, device=dev)
        return self.generator.on(generator_unet, self.schedule)(z, t, batch.cond, batch.uncond, s).x0.float()

    def gradient(self, x: torch.Tensor, batch: PromptBatch, gen: torch.Generator) -> torch.Tensor:
        """The DMD generator gradient at G's samples x (no gradient flows through it)."""
        n, dev = x.shape[0], x.device
        with torch.no_grad():
            t = score_timesteps(gen, n, self.schedule.num_train_timesteps).to(dev)
            z, _, _, _ = noisy(self.schedule, x.detach(), t, gen)
            real = self.real(z, t, batch.cond, batch.uncond, torch.full((n,), self.real_guidance, device=dev))
            fake = self.fake.predict(z, t, batch.cond, batch.uncond)
            return dmd_gradient(x.detach(), real.x0, fake.x0)

    def __call__(self, generator_unet: torch.nn.Module, batch: PromptBatch, gen: torch.Generator) -> torch.Tensor:
        x = self.sample(generator_unet, batch, gen)
        loss = generator_loss(x, self.gradient(x, batch, gen))
        for k in range(self.fake_updates):
            if k == 0:
                fresh = x.detach()
            else:
                with torch.no_grad():
                    fresh = self.sample(generator_unet, batch, gen)
            self.fake.update(fresh, batch.cond, batch.uncond, gen)
        return loss


def latent_shape(unet_config, vae_scale_factor: int, size: int) -> tuple[int, int, int]:
    """(C, h, w) of the latents G draws for images of side `size`."""
    return int(unet_config.in_channels), size // vae_scale_factor, size // vae_scale_factor


__all__ = ["DMDLoss", "FakeScore", "PromptBatch", "denoising_loss", "dmd_gradient", "generator_loss",
           "latent_shape", "score_timesteps"]
