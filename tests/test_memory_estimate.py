"""The memory estimate of `--dry-run`: closed-form parts, activations counted on the meta device."""

import json

from snapdistill.models.memory import estimate_memory, saved_activation_bytes
from snapdistill.models.tiny_sd import tiny_sd_unet_config


def test_estimate_parts_in_closed_form():
    e = estimate_memory(student_params=1000, frozen_params=500, mixed_precision="bf16", optimizer="adamw8bit",
                        ema=True, batch_size=2, activation_bytes={False: 100, True: 10}, gradient_checkpointing=True)
    assert (e.weights, e.grads, e.optimizer, e.ema, e.frozen) == (4000, 4000, 2000, 4000, 1000)
    assert (e.activations, e.activations_plain, e.activations_checkpointed) == (10, 100, 10)  # bf16 halves
    assert e.total == 4000 + 4000 + 2000 + 4000 + 1000 + 10
    fp32 = estimate_memory(student_params=1000, frozen_params=500, mixed_precision="no", optimizer="adamw", ema=False,
                           batch_size=2, activation_bytes={False: 100, True: 10}, gradient_checkpointing=False)
    assert (fp32.optimizer, fp32.ema, fp32.frozen, fp32.activations) == (8000, 0, 2000, 200)


def test_activations_grow_with_area_and_shrink_with_checkpointing():
    config = tiny_sd_unet_config()
    small = saved_activation_bytes(config, size=32, vae_factor=4)
    large = saved_activation_bytes(config, size=64, vae_factor=4)
    checkpointed = saved_activation_bytes(config, size=64, vae_factor=4, checkpointing=True)
    assert 3 < large / small <= 4.2  # about the area (fixed-size text and time parts aside)
    assert checkpointed < large / 3


def test_dry_run_prints_counts_and_estimate(cli, tmp_path, tiny_eps_dir, test_shards):
    from diffusers import UNet2DConditionModel

    code, out, err = cli("distill-guidance", "--teacher", tiny_eps_dir, "--shards", test_shards, "--out", tmp_path / "o",
                         "--cond-dim", 16, "--batch-size", 4, "--mixed-precision", "bf16", "--dry-run")
    assert code == 0, err
    assert json.loads(out)["common"]["train"]["batch_size"] == 4 and not (tmp_path / "o").exists()
    teacher = UNet2DConditionModel.from_pretrained(tiny_eps_dir / "unet")
    student = sum(p.numel() for p in teacher.parameters()) + 16 * teacher.time_embedding.linear_1.in_features  # cond_proj, no bias
    assert f"student parameters {student:,};" in err
    assert "batch 4, 32 px, mixed precision bf16, adamw, EMA on" in err and "activations without / with" in err
