"""The small decoder's loss against its teacher, and the PSNR its validation reports (`distill-decoder`).

The decoders themselves (layouts, sizes, latent conventions) are model code: `snapdistill.models.small_decoder`.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from snapdistill.errors import SnapdistillError
from snapdistill.models.small_decoder import to_latents, to_pixels


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1], peak-to-peak 2: 10·log10(4 / MSE)."""
    mse = (a.clamp(-1, 1) - b.clamp(-1, 1)).square().flatten(1).mean(1)
    return 10 * torch.log10(4 / mse.clamp_min(1e-12))


class DecoderLoss:
    """Per-sample loss of a small VAE against its teacher on one batch of diffusion-space latents:
    pixel L1 or L2 to the teacher decoder's output, plus `perceptual` × the squared distance of a feature
    network's features, plus `encoder_weight` × the squared error of its encoder to the teacher's latents
    (the small VAE's own encoder, so that the saved folder also encodes; the training latents are the
    teacher's either way)."""

    PIXEL = {"l1": lambda a, b: (a - b).abs(), "l2": lambda a, b: (a - b).square()}

    def __init__(self, *, pixel: str = "l1", features=None, perceptual: float = 0.0, encoder_weight: float = 1.0):
        if pixel not in self.PIXEL:
            raise SnapdistillError(f"unknown --loss '{pixel}'; choose one of {', '.join(self.PIXEL)}")
        if features is None and perceptual:
            raise SnapdistillError("a perceptual weight needs a feature network (--perceptual)")
        self.pixel, self.features, self.perceptual, self.encoder_weight = pixel, features, perceptual, encoder_weight

    def __call__(self, vae, *, latents: torch.Tensor, target: torch.Tensor, images: torch.Tensor,
                 image_latents: torch.Tensor) -> torch.Tensor:
        """`target`: the teacher's decoding of `latents`; `images`: what the encoder reads, whose teacher
        latents are `image_latents`."""
        out = to_pixels(vae, latents)
        loss = self.PIXEL[self.pixel](out, target).flatten(1).mean(1)
        if self.perceptual:
            with torch.no_grad():
                want = self.features(target)
            loss = loss + self.perceptual * (self.features(out) - want).square().flatten(1).mean(1)
        if self.encoder_weight:
            z = to_latents(vae, images)
            loss = loss + self.encoder_weight * F.mse_loss(z, image_latents, reduction="none").flatten(1).mean(1)
        return loss
