"""The deterministic DDIM step (eta = 0), its second-order multistep refinement (DPM-Solver++(2M)), and the
step-distillation targets derived from the DDIM step."""

from __future__ import annotations

import torch

from snapdistill.diffusion.convert import Scalar, per_sample, v_from_x0_eps


def ddim_step(*, x0: torch.Tensor, eps: torch.Tensor, alpha_next: Scalar, sigma_next: Scalar) -> torch.Tensor:
    """z' = α'·x0 + σ'·eps."""
    return per_sample(alpha_next, x0) * x0 + per_sample(sigma_next, x0) * eps


def dpm_solver_pp_step(*, z: torch.Tensor, x0: torch.Tensor, alpha: Scalar, sigma: Scalar, alpha_next: Scalar,
                       sigma_next: Scalar, x0_prev: torch.Tensor | None = None,
                       h_prev: torch.Tensor | None = None) -> torch.Tensor:
    """One DPM-Solver++ step in data prediction (Lu et al. 2022), from z at (α, σ) to (α', σ').

    With λ = log(α/σ) and h = λ' − λ: first order (no history) z' = (σ'/σ)·z + α'·(1 − e^(−h))·x0, which is the
    DDIM step; second order (2M, with the previous step's x0 and its h_prev) uses
    D = (1 + 1/(2r))·x0 − 1/(2r)·x0_prev, r = h_prev/h, in place of x0. A step onto σ' = 0 stays first order
    (h is infinite there), as diffusers' `lower_order_final` does.
    """
    a, s = per_sample(alpha, z), per_sample(sigma, z)
    a2, s2 = per_sample(alpha_next, z), per_sample(sigma_next, z)
    decay = (s2 * a) / (s * a2)  # e^(−h)
    d = x0
    if x0_prev is not None and h_prev is not None:
        h = step_h(alpha=alpha, sigma=sigma, alpha_next=alpha_next, sigma_next=sigma_next)
        half_inv_r = per_sample(torch.where(torch.isfinite(h), h / (2 * h_prev), torch.zeros_like(h)), z)
        d = x0 + half_inv_r * (x0 - x0_prev)
    return (s2 / s) * z + a2 * (1 - decay) * d


def step_h(*, alpha: Scalar, sigma: Scalar, alpha_next: Scalar, sigma_next: Scalar) -> torch.Tensor:
    """h = λ' − λ with λ = log(α/σ): the step's length in half-log-SNR (inf onto σ' = 0)."""
    def lam(a, s):
        return torch.log(torch.as_tensor(a, dtype=torch.float64)) - torch.log(torch.as_tensor(s, dtype=torch.float64))

    return (lam(alpha_next, sigma_next) - lam(alpha, sigma)).float()


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
