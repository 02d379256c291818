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

A generator of N > 1 steps (DMD2's multi-step generator) samples on the grid t_0 = T − 1 > t_1 > … > t_{N−1}: it
predicts x0 at t_i, re-noises it to t_{i+1} with fresh noise, predicts again, and returns its last x0 (diffusers'
`LCMScheduler` does exactly this, so it is the student folder's scheduler). It is trained by backward simulation:
each sample draws its grid step k, and its input there comes from running the current generator from noise for k
steps without gradient, so that training sees the inputs sampling sees.

The GAN term (DMD2): a small head on the fake network's mid-block features tells noised real latents from noised
generator samples (non-saturating logistic loss). The head is trained with the fake network (its loss weighted by
`head_weight`), the generator's term −log D(noised x) is weighted by `gan_weight`; only this term reads images.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from snapdistill.diffusion import NoiseSchedule, Prediction, from_x0_eps, noisy
from snapdistill.distill.guided import Guided, StudentKind
from snapdistill.errors import SnapdistillError

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


def gan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating loss per sample, −log σ(D(x)) = softplus(−logit)."""
    return F.softplus(-fake_logits.float())


def gan_head_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The head's logistic loss, −log σ(D(real)) − log(1 − σ(D(fake))), averaged over both batches."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


class GANHead(torch.nn.Module):
    """One logit per sample from a UNet's mid-block features [B, C, h, w]: conv 3×3, GroupNorm, SiLU, conv 1×1 to
    one channel, mean over positions (any h, w)."""

    def __init__(self, channels: int, hidden: int | None = None, seed: int = 0):
        super().__init__()
        hidden = hidden or max(channels // 4, 16)
        with torch.random.fork_rng(devices=[]):  # the same head for the same seed, whatever ran before
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(channels, hidden, 3, padding=1), torch.nn.GroupNorm(math.gcd(32, hidden), hidden),
                torch.nn.SiLU(), torch.nn.Conv2d(hidden, 1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.to(self.net[0].weight.dtype)).mean(dim=(1, 2, 3))


class _Stop(Exception):
    """Raised by the mid-block hook when only the features are wanted: the up path is not run."""


@contextmanager
def _frozen(module: torch.nn.Module):
    """`module`'s parameters take no gradient inside (gradients still flow through it to its inputs)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(f)


class FakeScore:
    """The fake score network and its optimiser: the second network of the dmd route, part of the route's state.

    `unet` starts as a copy of the teacher; `kind` reads it (its prediction type; a w input is fed w = 0, the
    model without guidance). `update` takes one optimisation step of the denoising loss on G's samples.
    """

    def __init__(self, unet: torch.nn.Module, kind: StudentKind, schedule: NoiseSchedule, *, lr: float,
                 max_grad_norm: float = 1.0, head: GANHead | None = None, head_weight: float = 0.0):
        self.unet, self.kind, self.schedule, self.max_grad_norm = unet, kind, schedule, max_grad_norm
        self.head, self.head_weight = head, head_weight
        if head is not None and getattr(unet, "mid_block", None) is None:
            raise SnapdistillError("--gan-weight needs a teacher UNet with a mid block (its features feed the head)")
        # What the loop checkpoints: the network alone, or the network and its head (keys unet.*, head.*).
        self.module = unet if head is None else torch.nn.ModuleDict({"unet": unet, "head": head})
        self.module.train().requires_grad_(True)
        # Constant rate, no decay: the fake network keeps tracking a moving G (DMD2 trains it the same way).
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=lr, weight_decay=0.0)
        self.last_loss = self.last_head_loss = float("nan")

    def predict(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> Prediction:
        """Its prediction at (z, t) without guidance (s = 1)."""
        return self.kind.on(self.unet, self.schedule)(z, t, cond, uncond, torch.ones(z.shape[0], device=z.device))

    def predict_with_features(self, z, t, cond, uncond, *, full: bool = True):
        """(its prediction, or None when not `full`, and its mid-block features); without `full` the up path is
        not run."""
        store = {}

        def hook(_module, _args, output):
            store["mid"] = output
            if not full:
                raise _Stop

        handle = self.unet.mid_block.register_forward_hook(hook)
        try:
            pred = self.predict(z, t, cond, uncond)
        except _Stop:
            pred = None
        finally:
            handle.remove()
        return pred, store["mid"]

    def noised(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_t, t, eps): x noised at t uniform in [0, T), all drawn from `gen`."""
        t = torch.randint(0, self.schedule.num_train_timesteps, (x.shape[0],), generator=gen).to(x.device)
        z, eps, _, _ = noisy(self.schedule, x, t, gen)
        return z, t, eps

    def logits(self, x: torch.Tensor, cond, uncond, gen: torch.Generator) -> torch.Tensor:
        """The head's logits on x noised at t uniform in [0, T) (the features only: no up path)."""
        z, t, _ = self.noised(x, gen)
        return self.head(self.predict_with_features(z, t, cond, uncond, full=False)[1])

    def update(self, x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, gen: torch.Generator,
               real: torch.Tensor | None = None) -> float:
        """One AdamW step of the denoising loss on samples `x` (detached), t uniform in [0, T); with a head and real
        latents `real`, plus head_weight × the head's loss (x's features from the same call, the real latents'
        from one more). Returns the loss."""
        from snapdistill.dist import average_gradients

        x = x.detach()
        z, t, eps = self.noised(x, gen)
        if self.head is not None and real is not None:
            pred, features = self.predict_with_features(z, t, cond, uncond)
            loss = denoising_loss(pred, x, eps).mean()
            real_logits = self.logits(real.detach().float(), cond, uncond, gen)
            head_loss = gan_head_loss(real_logits, self.head(features))
            self.last_head_loss = float(head_loss.detach())
            loss = loss + self.head_weight * head_loss
        else:
            loss = denoising_loss(self.predict(z, t, cond, uncond), x, eps).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.module)  # several processes: one fake network, the mean of their gradients
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = float(loss.detach())
        return self.last_loss


@dataclass
class DMDLoss:
    """The dmd route's loss: `loss(generator_unet, batch, gen)` per sample, training the fake score on the way.

    One call: G draws x (with gradient) at a grid step drawn per sample, its input simulated from noise by the
    current G (`sample`); the real and fake scores give the generator gradient at a noised copy of x; with
    `gan_weight` > 0 the GAN term is added (its scale: `gan_weight` in units of the DMD loss as a mean over a sample's
    elements, DMD2's). Then the fake network takes `fake_updates` steps, the first on x (detached), the others on
    fresh samples of G without gradient (with real latents for its head when the batch has them). `generator_scale`
    is the scale G is fed when it takes w (its guidance baked in; None: G runs without guidance input). `grid` is
    G's descending timesteps (empty: one step at T − 1).
    """

    real: Guided
    fake: FakeScore
    generator: StudentKind
    schedule: NoiseSchedule
    latent_shape: tuple[int, int, int]
    real_guidance: float = 1.5
    fake_updates: int = 5
    generator_scale: float = 1.0
    grid: tuple[int, ...] = ()
    gan_weight: float = 0.0

    def timesteps(self) -> tuple[int, ...]:
        return tuple(self.grid) or (self.schedule.num_train_timesteps - 1,)

    def start(self, n: int, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(pure noise [n, C, h, w], the grid's first timestep [n]) G starts from."""
        noise = torch.randn((n, *self.latent_shape), generator=gen).to(device)
        t = torch.full((n,), self.timesteps()[0], device=device, dtype=torch.long)
        return noise, t

    def sample(self, generator_unet: torch.nn.Module, batch, gen: torch.Generator) -> torch.Tensor:
        """G's x0 for the batch's prompts, from fresh noise. Several grid steps: each sample draws its step k and
        the input there is simulated by G itself without gradient (predict x0, re-noise it to the next timestep with
        fresh noise), so x is what G returns at step k when sampled; one step: x is G's sample."""
        n, dev = batch.cond.shape[0], batch.cond.device
        grid = self.timesteps()
        z, t = self.start(n, gen, dev)
        s = torch.full((n,), self.generator_scale, device=dev)
        run = self.generator.on(generator_unet, self.schedule)
        if len(grid) > 1:
            k = torch.randint(0, len(grid), (n,), generator=gen).to(dev)
            with torch.no_grad():
                for i in range(int(k.max())):
                    x0 = run(z, torch.full_like(t, grid[i]), batch.cond, batch.uncond, s).x0.float()
                    renoised, _, _, _ = noisy(self.schedule, x0, torch.full_like(t, grid[i + 1]), gen)
                    z = torch.where((k > i).view(-1, 1, 1, 1), renoised.to(z.dtype), z)
            t = torch.tensor(grid, device=dev)[k]
        return run(z, t, batch.cond, batch.uncond, s).x0.float()

    def gradient(self, x: torch.Tensor, batch, gen: torch.Generator) -> torch.Tensor:
        """The DMD generator gradient at G's samples x (no gradient flows through it)."""
        n, dev = x.shape[0], x.device
        with torch.no_grad():
            t = score_timesteps(gen, n, self.schedule.num_train_timesteps).to(dev)
            z, _, _, _ = noisy(self.schedule, x.detach(), t, gen)
            real = self.real(z, t, batch.cond, batch.uncond, torch.full((n,), self.real_guidance, device=dev))
            fake = self.fake.predict(z, t, batch.cond, batch.uncond)
            return dmd_gradient(x.detach(), real.x0, fake.x0)

    def gan_term(self, x: torch.Tensor, batch, gen: torch.Generator) -> torch.Tensor:
        """gan_weight × elements per sample × softplus(−D(noised x)) per sample, gradient to x only (the fake network
        and its head take none). Its gradient is taken now, while the fake weights are those it was computed with
        (the fake updates that follow change them in place); the term returned carries it to x as a surrogate:
        value the GAN loss, gradient with respect to x exactly that one."""
        with _frozen(self.fake.module):
            per_sample = self.gan_weight * x[0].numel() * gan_generator_loss(
                self.fake.logits(x, batch.cond, batch.uncond, gen))
            (grad,) = torch.autograd.grad(per_sample.sum(), x)
        dims = tuple(range(1, x.ndim))
        return per_sample.detach() + (x.float() * grad).sum(dim=dims) - (x.detach().float() * grad).sum(dim=dims)

    def __call__(self, generator_unet: torch.nn.Module, batch, gen: torch.Generator) -> torch.Tensor:
        x = self.sample(generator_unet, batch, gen)
        loss = generator_loss(x, self.gradient(x, batch, gen))
        real = getattr(batch, "latents", None) if self.gan_weight > 0 else None
        if real is not None:
            loss = loss + self.gan_term(x, batch, gen)
        for k in range(self.fake_updates):
            if k == 0:
                fresh = x.detach()
            else:
                with torch.no_grad():
                    fresh = self.sample(generator_unet, batch, gen)
            self.fake.update(fresh, batch.cond, batch.uncond, gen, real=real)
        return loss


def latent_shape(unet_config, vae_scale_factor: int, size: int) -> tuple[int, int, int]:
    """(C, h, w) of the latents G draws for images of side `size`."""
    return int(unet_config.in_channels), size // vae_scale_factor, size // vae_scale_factor


__all__ = ["DMDLoss", "FakeScore", "GANHead", "PromptBatch", "denoising_loss", "dmd_gradient", "gan_generator_loss",
           "gan_head_loss", "generator_loss", "latent_shape", "score_timesteps"]
