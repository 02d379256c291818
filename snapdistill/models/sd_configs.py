"""The real SD 1.5 and SD 2.1 architectures (UNet, VAE, text encoder, scheduler), as configs.

They build random-init pipelines of the real sizes for tests without weights (`random_sd_pipeline`), and
config-only folders for the memory estimate (`save_sd_configs`), which reads JSON configs and no weights.
"""

from __future__ import annotations

import json
from pathlib import Path

_UNET = {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
         "block_out_channels": [320, 640, 1280, 1280], "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
         "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "cross_attention_dim": 768,
         "attention_head_dim": 8, "norm_num_groups": 32, "flip_sin_to_cos": True, "freq_shift": 0}
_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
        "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "norm_num_groups": 32, "sample_size": 512,
        "scaling_factor": 0.18215}
_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
         "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
         "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}
_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading"}

SD_CONFIGS = {
    "sd15": {"unet": _UNET, "vae": _VAE, "text_encoder": _TEXT, "prediction_type": "epsilon"},
    # SD 2.1 (768): per-stage heads, linear projections, OpenCLIP ViT-H text (23 layers, 1024 wide), v-prediction.
    "sd21": {"unet": {**_UNET, "sample_size": 96, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
                      "use_linear_projection": True, "upcast_attention": True},
             "vae": {**_VAE, "sample_size": 768},
             "text_encoder": {**_TEXT, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                              "num_attention_heads": 16, "hidden_act": "gelu", "projection_dim": 512},
             "prediction_type": "v_prediction"},
}


def random_sd_pipeline(version: str, *, seed: int = 0):
    """A random-init `StableDiffusionPipeline` of the real `version` architecture (sd15 or sd21)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from snapdistill.models.tokenizer import build_clip_tokenizer

    c = SD_CONFIGS[version]
    torch.manual_seed(seed)
    return StableDiffusionPipeline(
        unet=UNet2DConditionModel(**c["unet"]), vae=AutoencoderKL(**c["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**c["text_encoder"])), tokenizer=build_clip_tokenizer(),
        scheduler=DDIMScheduler(**_SCHEDULER, prediction_type=c["prediction_type"]), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def save_sd_configs(folder: Path, version: str) -> Path:
    """A folder with `version`'s configs and no weights: enough for `--dry-run`'s estimate, not for training."""
    folder = Path(folder)
    c = SD_CONFIGS[version]
    for part in ("unet", "vae", "text_encoder"):
        (folder / part).mkdir(parents=True, exist_ok=True)
        (folder / part / "config.json").write_text(json.dumps(c[part], indent=2))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder
