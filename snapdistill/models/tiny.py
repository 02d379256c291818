"""Tiny *random* SD-architecture pipelines, built from configs.

They use the same classes as SD 1.5 / SD 2.x (UNet2DConditionModel, AutoencoderKL, CLIPTextModel,
the real CLIP tokenizer) at toy sizes, so every real code path runs on a CPU in seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch

SD_SCHEDULER_CONFIG = {
    # SD 1.x / 2.x training schedule ("scaled_linear", 1000 steps).
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def tiny_components(
    *,
    seed: int = 0,
    prediction_type: str = "epsilon",
    sample_size: int = 32,
    text_dim: int = 32,
    time_cond_proj_dim: int | None = None,
):
    """The components of a tiny random SD pipeline (a dict for `StableDiffusionPipeline(**c)`)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from snapdistill.models.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        time_cond_proj_dim=time_cond_proj_dim,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=text_dim,
            intermediate_size=2 * text_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG, prediction_type=prediction_type)
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": build_clip_tokenizer(),
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def tiny_pipeline(**kwargs):
    """A tiny random `StableDiffusionPipeline` (see `tiny_components` for the options)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**tiny_components(**kwargs))


def save_tiny_pipeline(folder: Path, **kwargs) -> Path:
    """Save a tiny random pipeline as a diffusers folder that stock diffusers loads; return it."""
    folder = Path(folder)
    tiny_pipeline(**kwargs).save_pretrained(folder)
    return folder
