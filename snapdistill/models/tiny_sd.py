"""A tiny random UNet with SD's block layout, for block-removal (BK-SDM) students.

`tiny_components` keeps its UNet to 2 stages of 1 layer, from which no block can be removed. This one has
SD 1.x's layout at toy widths: 4 stages (three with cross-attention, the innermost without), 2 layers per
down stage (3 per up stage) and a cross-attention mid block. `sd2=True` gives SD 2.x's per-stage head
dimensions and linear projections instead.
"""

from __future__ import annotations

from pathlib import Path


def tiny_sd_unet_config(*, sample_size: int = 8, cross_attention_dim: int = 32, sd2: bool = False) -> dict:
    """The config of a tiny UNet2DConditionModel laid out like SD's (see the module docstring)."""
    return {
        "sample_size": sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": [16, 32, 64, 64],
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": [2, 4, 8, 8] if sd2 else 4,
        "use_linear_projection": sd2,
        "norm_num_groups": 8,
    }


def tiny_sd_unet(seed: int = 0, **kwargs):
    """A random UNet of `tiny_sd_unet_config(**kwargs)`, seeded."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**tiny_sd_unet_config(**kwargs)).eval()


def save_tiny_sd_pipeline(folder: Path, *, seed: int = 0, sd2: bool = False) -> Path:
    """A tiny random SD pipeline (32 px, 8x8 latents) with this UNet, saved as a diffusers folder."""
    from diffusers import StableDiffusionPipeline

    from snapdistill.models.tiny import tiny_components

    components = tiny_components(seed=seed)
    components["unet"] = tiny_sd_unet(seed, sd2=sd2)
    StableDiffusionPipeline(**components).save_pretrained(folder)
    return Path(folder)
