"""The toy VAE: a diffusers `AutoencoderKL` (4x downsampling, 4 latent channels) trained on toy images.

32 px images become 4x8x8 latents, the size at which a tiny UNet trains fast on a CPU. The VAE is
trained for reconstruction (MSE + L1) with a tiny KL term, and its `scaling_factor` is set to
1/std of the training latents, as SD's is.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from snapdistill.toy.judge import toy_tensors
from snapdistill.toy.world import TOY_SIZE

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 32, 64],
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": TOY_SIZE,
}


def build_vae(seed: int = 0):
    """A freshly initialised toy `AutoencoderKL`."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_CONFIG)


def encode_mean(vae, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Unscaled latent means of images in [-1, 1]."""
    with torch.no_grad():
        return torch.cat([vae.encode(x[i : i + batch]).latent_dist.mean for i in range(0, len(x), batch)])


def decode(vae, z: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Images in [-1, 1] from unscaled latents."""
    with torch.no_grad():
        return torch.cat([vae.decode(z[i : i + batch]).sample for i in range(0, len(z), batch)]).clamp(-1, 1)


def train_vae(
    *,
    seed: int = 0,  # seeds the data stream and the init
    steps: int = 2000,  # optimiser steps
    batch: int = 32,  # images per step
    lr: float = 1e-3,  # AdamW peak rate, cosine-decayed to 0
    kl_weight: float = 1e-6,  # keeps the latent posterior well behaved without blurring
    n_train: int = 24576,  # distinct train images
    log=print,
):
    """Train the toy VAE from scratch; return it (scaling_factor set) and the recipe."""
    vae = build_vae(seed)
    g = torch.Generator().manual_seed(seed + 1)
    x_all, _ = toy_tensors("train", n_train, seed=seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = x_all[torch.randint(0, n_train, (batch,), generator=g)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(
                f"vae step {step}/{steps} loss {loss.item():.5f} kl {kl.item():.3f} ({time.time() - t0:.0f}s)"
            )
    vae.eval()
    std = float(encode_mean(vae, x_all[:4096]).std())
    vae.register_to_config(scaling_factor=1.0 / std)
    recipe = {
        "seed": seed,
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "kl_weight": kl_weight,
        "n_train": n_train,
    }
    return vae, recipe


def vae_stage(folder: Path, *, seed: int = 0, steps: int = 2000, log=print) -> Path:
    """Train the VAE into `folder` (a diffusers folder + manifest.json); reuse it when already finished."""
    from snapdistill.manifest import read_manifest, write_manifest

    folder = Path(folder)
    found = read_manifest(folder)
    if found is not None and found.get("stage") == "toy-vae" and found["config"].get("steps") == steps:
        log(f"vae: reusing {folder}")
        return folder
    t0 = time.time()
    vae, recipe = train_vae(seed=seed, steps=steps, log=log)
    folder.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(folder)
    metrics = {
        "train_minutes": round((time.time() - t0) / 60, 2),
        "scaling_factor": vae.config.scaling_factor,
    }
    write_manifest(
        folder, stage="toy-vae", config={**recipe, "architecture": VAE_CONFIG}, metrics=metrics, seed=seed
    )
    return folder
