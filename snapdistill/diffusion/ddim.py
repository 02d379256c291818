"""The deterministic DDIM step (eta = 0) and the step-distillation targets derived from it."""

from __future__ import annotations

import torch

from snapdistill.diffusion.convert import Scalar, per_sample, v_from_x0_eps


def ddim_step(*, x0: torch.Tensor, eps: torch.Tensor, alpha_next: Scalar, sigma_next: Scalar) -> torch.Tensor:
    """z' = α'·x0 + σ'·eps."""
    return per_sample(alpha_next, x0) * x0 + per_sample(sigma_next, x0) * eps


def x0_for_landing(
    *,
    z: torch.Tensor,
    z_next: torch.Tensor,
    alpha: Scalar,
    sigma: Scalar,
    alpha_next: Scalar,
    sigma_next: Scalar,
) -> torch.Tensor:
    """x̃ = (z'' − (σ''/σ)·z)/(α'' − σ''·α/σ): the x0 whose DDIM step from z lands on z''."""
    a, s = per_sample(alpha, z), per_sample(sigma, z)
    a2, s2 = per_sample(alpha_next, z), per_sample(sigma_next, z)
    return (z_next - (s2 / s) * z) / (a2 - s2 * a / s)


def eps_for_landing(
    *,
    z: torch.Tensor,
    z_next: torch.Tensor,
    alpha: Scalar,
    sigma: Scalar,
    alpha_next: Scalar,
    sigma_next: Scalar,
) -> torch.Tensor:
    """ẽ = (z'' − (α''/α)·z)/(σ'' − α''·σ/α): the eps whose DDIM step from z lands on z''."""
    a, s = per_sample(alpha, z), per_sample(sigma, z)
    a2, s2 = per_sample(alpha_next, z), per_sample(sigma_next, z)
    return (z_next - (a2 / a) * z) / (s2 - a2 * s / a)


def v_for_landing(
    *,
    z: torch.Tensor,
    z_next: torch.Tensor,
    alpha: Scalar,
    sigma: Scalar,
    alpha_next: Scalar,
    sigma_next: Scalar,
) -> torch.Tensor:
    """ṽ = α·ẽ − σ·x̃: the v whose DDIM step from z lands on z''."""
    # Both landing targets are formed directly: neither passes through a division by α or σ alone.
    kw = dict(z=z, z_next=z_next, alpha=alpha, sigma=sigma, alpha_next=alpha_next, sigma_next=sigma_next)
    return v_from_x0_eps(x0=x0_for_landing(**kw), eps=eps_for_landing(**kw), alpha=alpha, sigma=sigma)
