"""The training noise schedule: ᾱ_t per integer timestep, and α, σ, SNR derived from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from snapdistill.errors import SnapdistillError


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """z_t = α_t·x0 + σ_t·eps with α_t = sqrt(ᾱ_t), σ_t = sqrt(1 − ᾱ_t), for t in [0, T).

    `alphas_cumprod` is a float64 tensor [T]. Built from a scheduler config, it holds exactly the
    values diffusers computes (in float32), so targets agree with the samplers that use them.
    With rescale_betas_zero_snr, ᾱ_{T−1} is exactly 0 here (as in DDPM/DDIM), while diffusers'
    Euler, DPM-Solver and UniPC schedulers clamp it to 2⁻²⁴.
    """

    alphas_cumprod: torch.Tensor

    def __post_init__(self):
        ac = torch.as_tensor(self.alphas_cumprod).detach().to(dtype=torch.float64, device="cpu")
        if ac.ndim != 1 or len(ac) == 0:
            raise ValueError(f"alphas_cumprod must be a non-empty 1-D tensor, got shape {tuple(ac.shape)}")
        object.__setattr__(self, "alphas_cumprod", ac)

    @classmethod
    def from_scheduler_config(cls, config: Mapping) -> NoiseSchedule:
        """The schedule diffusers' `DDPMScheduler` builds from `config` (any beta_schedule it knows)."""
        from diffusers import DDPMScheduler

        try:
            scheduler = DDPMScheduler.from_config(dict(config))
        except NotImplementedError as e:  # raised by diffusers for a beta_schedule it does not know
            raise SnapdistillError(f"unsupported scheduler config: {e}") from e
        return cls(alphas_cumprod=scheduler.alphas_cumprod)

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training timesteps."""
        return len(self.alphas_cumprod)

    def alphas_cumprod_at(self, t: int | torch.Tensor) -> torch.Tensor:
        """ᾱ_t in float64, on t's device when t is a tensor."""
        if isinstance(t, torch.Tensor):
            return self.alphas_cumprod.to(t.device)[t.long()]
        return self.alphas_cumprod[int(t)]

    def alpha(self, t: int | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """α_t = sqrt(ᾱ_t)."""
        return self.alphas_cumprod_at(t).sqrt().to(dtype)

    def sigma(self, t: int | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """σ_t = sqrt(1 − ᾱ_t)."""
        return (1 - self.alphas_cumprod_at(t)).sqrt().to(dtype)

    def alpha_sigma(
        self, t: int | torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_t, σ_t)."""
        return self.alpha(t, dtype), self.sigma(t, dtype)

    def snr(self, t: int | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """SNR_t = α_t²/σ_t² = ᾱ_t/(1 − ᾱ_t)."""
        ac = self.alphas_cumprod_at(t)
        return (ac / (1 - ac)).to(dtype)

    def logsnr(self, t: int | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """λ_t = log(α_t²/σ_t²)."""
        ac = self.alphas_cumprod_at(t)
        return (ac.log() - (1 - ac).log()).to(dtype)


def noisy(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, gen: torch.Generator):
    """(z_t, eps, α, σ) with z_t = α·x0 + σ·eps and eps ~ N(0, I) drawn from `gen`."""
    eps = torch.randn(x0.shape, generator=gen).to(x0)
    alpha, sigma = schedule.alpha_sigma(t)
    alpha, sigma = alpha.to(x0.device), sigma.to(x0.device)
    z = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps
    return z, eps, alpha, sigma


def alpha_sigma_at(schedule: NoiseSchedule, final_ac: float, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, σ) per sample for timesteps t [B], where a negative t (a grid's FINAL) means ᾱ = `final_ac`."""
    ac = schedule.alphas_cumprod.to(t.device)[t.clamp(min=0).long()]
    ac = torch.where(t < 0, torch.full_like(ac, final_ac), ac)
    return ac.sqrt().float(), (1 - ac).sqrt().float()
