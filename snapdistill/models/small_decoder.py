"""Small decoders for a teacher's latent space: how each is built, its size in closed form, and
how it maps latents to pixels (its loss is `snapdistill.distill.decoder_loss`).

Two layouts, both stock diffusers classes, so a saved small decoder loads with `from_pretrained`:
- `kl`: the teacher's own `AutoencoderKL` layout with every block's channels × width (SnapFusion's way),
  rounded to a multiple of the GroupNorm group count so the norms still divide.
- `tiny`: diffusers' `AutoencoderTiny` (TAESD's layout): plain conv blocks, no norms or attention, as many
  stages as the teacher has (so the same downsampling), channels = width × the teacher's first block.

Latent conventions. A pipeline decodes `vae.decode(latents / vae.config.scaling_factor)`, where `latents` are
the diffusion-space (scaled) latents. The `kl` decoder carries the teacher's scaling_factor and so decodes the
teacher's unscaled latents, as the teacher's decoder does. The `tiny` decoder keeps TAESD's convention,
scaling_factor 1.0: it decodes the diffusion-space latents themselves, which its input clamp (tanh(x/3)·3)
expects to be of unit scale. `to_pixels` and `to_latents` below hide the difference.
"""

from __future__ import annotations

import math

import torch

from snapdistill.errors import SnapdistillError

ARCHS = ("kl", "tiny")
# Config keys of a teacher VAE that are not the architecture (diffusers bookkeeping).
_PRIVATE = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def check_width(width: float) -> float:
    """Refuse a width outside (0, 1] (nan included)."""
    if not (isinstance(width, (int, float)) and 0 < width <= 1):
        raise SnapdistillError(f"--width must be in (0, 1], got {width}")
    return float(width)


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise SnapdistillError(f"unknown --arch '{arch}'; choose one of {', '.join(ARCHS)}")
    return arch


def reduced_channels(channels: list[int], width: float, groups: int) -> list[int]:
    """Each channel count × width, rounded to the nearest multiple of `groups` (at least `groups`)."""
    return [max(groups, groups * round(c * width / groups)) for c in channels]


def teacher_vae_config(vae_config) -> dict:
    """The architecture part of a teacher VAE config, as a plain dict."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(vae_config).items() if k not in _PRIVATE}


def kl_config(teacher: dict, width: float) -> dict:
    """The channel-reduced `AutoencoderKL` config: the teacher's layout and scaling, block_out_channels × width."""
    check_width(width)
    config = dict(teacher)
    config["block_out_channels"] = reduced_channels(teacher["block_out_channels"], width, teacher["norm_num_groups"])
    return config


def tiny_config(teacher: dict, width: float) -> dict:
    """An `AutoencoderTiny` config for the teacher's latent space: TAESD's blocks (1,3,3,… encoder; …,3,3,1
    decoder) over as many stages as the teacher has, channels = width × the teacher's first block rounded to a
    multiple of 8 (SD 1.5 at width 0.5: 64, TAESD's own), scaling_factor 1.0 (diffusion-space latents)."""
    check_width(width)
    stages = len(teacher["block_out_channels"])
    if stages < 2:
        raise SnapdistillError("--arch tiny needs a teacher VAE that downsamples (two or more blocks)")
    channels = reduced_channels([teacher["block_out_channels"][0]], width, 8)[0]
    return {
        "in_channels": teacher.get("in_channels", 3),
        "out_channels": teacher.get("out_channels", 3),
        "latent_channels": teacher["latent_channels"],
        "encoder_block_out_channels": [channels] * stages,
        "decoder_block_out_channels": [channels] * stages,
        "num_encoder_blocks": [1] + [3] * (stages - 1),
        "num_decoder_blocks": [3] * (stages - 1) + [1],
        "scaling_factor": 1.0,
    }


def build_small(arch: str, teacher_config, width: float, seed: int = 0):
    """A freshly initialised small VAE of `arch` for the teacher VAE config `teacher_config`."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    config = small_config(arch, teacher_config, width)
    torch.manual_seed(seed)
    return (AutoencoderKL if arch == "kl" else AutoencoderTiny)(**config)


def decoder_parameters(vae) -> int:
    """Parameters used to decode: the decoder, plus post_quant_conv where there is one."""
    parts = [vae.decoder, getattr(vae, "post_quant_conv", None)]
    return sum(p.numel() for part in parts if part is not None for p in part.parameters())


def kl_decoder_parameters(config: dict) -> int:
    """The closed form of `decoder_parameters` for an `AutoencoderKL` config (UpDecoderBlock2D blocks)."""
    lat, out, per = config["latent_channels"], config.get("out_channels", 3), config.get("layers_per_block", 1)
    chans = list(config["block_out_channels"])

    def conv(i, o, k):  # weights and bias
        return i * o * k * k + o

    def resnet(i, o):  # two GroupNorm + 3x3 conv pairs, a 1x1 shortcut when the width changes
        return 2 * i + conv(i, o, 3) + 2 * o + conv(o, o, 3) + (conv(i, o, 1) if i != o else 0)

    top = chans[-1]
    attention = 2 * top + 4 * (top * top + top) if config.get("mid_block_add_attention", True) else 0
    total = conv(lat, top, 3) + 2 * resnet(top, top) + attention
    rev = chans[::-1]
    for i, c in enumerate(rev):
        total += resnet(rev[i - 1] if i else top, c) + per * resnet(c, c)
        if i < len(rev) - 1:
            total += conv(c, c, 3)  # the upsampler's conv
    total += 2 * chans[0] + conv(chans[0], out, 3)  # norm_out, conv_out
    if config.get("use_post_quant_conv", True):
        total += conv(lat, lat, 1)
    return total


def to_pixels(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (unclamped) from diffusion-space latents, as a diffusers pipeline decodes them."""
    return vae.decode(latents / vae.config.scaling_factor).sample


def to_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Diffusion-space latents of images in [-1, 1], as an img2img pipeline encodes them (posterior mean)."""
    out = vae.encode(pixels)
    z = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents
    return z * vae.config.scaling_factor


def scale_mismatch(a: float, b: float) -> bool:
    """True when two scaling factors differ beyond float noise."""
    return not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def small_config(arch: str, teacher_config, width: float) -> dict:
    """The config of the small VAE of `arch` for a teacher VAE config."""
    teacher = teacher_vae_config(teacher_config)
    if "block_out_channels" not in teacher or "latent_channels" not in teacher:
        raise SnapdistillError("the teacher's VAE has no block_out_channels/latent_channels; not an SD-style VAE")
    return kl_config(teacher, width) if check_arch(arch) == "kl" else tiny_config(teacher, width)


def check_fits(arch: str, teacher_config, width: float) -> None:
    """Refuse a small decoder narrower than the latents it reads: its first conv would discard latent channels."""
    config = small_config(arch, teacher_config, width)
    latent = config["latent_channels"]
    narrowest = min(config.get("decoder_block_out_channels") or config["block_out_channels"])
    if narrowest < latent:
        raise SnapdistillError(f"--arch {arch} at --width {width:g}: {narrowest} channels cannot take the teacher's "
                               f"{latent} latent channels; raise --width")
