"""Classifier-free guidance, and the w-embedding that a guidance-distilled student is fed."""

from __future__ import annotations

import torch

from snapdistill.diffusion.convert import Scalar, per_sample


def cfg(*, eps_u: torch.Tensor, eps_c: torch.Tensor, s: Scalar) -> torch.Tensor:
    """eps_cfg = eps_u + s·(eps_c − eps_u).

    Valid for the raw output of any prediction type: given z, every conversion is affine with
    weights that sum to one over the two outputs, so guiding outputs then converting equals
    converting then guiding. s may be a float or a per-sample [B] tensor.
    """
    return eps_u + per_sample(s, eps_u) * (eps_c - eps_u)


def student_w(s: Scalar) -> Scalar:
    """w = s − 1 (what diffusers' StableDiffusionPipeline embeds when unet.config.time_cond_proj_dim is set)."""
    return s - 1


def guidance_embedding(w: Scalar, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """emb = [sin(1000·w·f_k), cos(1000·w·f_k)] with f_k = 10000^(−k/(dim//2 − 1)), zero-padded to dim.

    Bit-for-bit what `StableDiffusionPipeline.get_guidance_scale_embedding(w, embedding_dim=dim,
    dtype=dtype)` returns; w is a float or a [B] tensor, and the result is [B, dim].
    """
    w = torch.as_tensor(w)
    w = w.reshape(1) if w.ndim == 0 else w
    if w.ndim != 1:
        raise ValueError(f"w must be a float or a 1-D tensor, got shape {tuple(w.shape)}")
    half = dim // 2
    # The operation order and dtypes below are diffusers' own, so the values match exactly.
    log_step = torch.log(torch.tensor(10000.0)) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -log_step)
    angles = (w * 1000.0).to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim - 2 * half))
