"""The memory estimate of a distillation run from its settings and the teacher's JSON configs (`--dry-run`).

The parts and how each is counted: `snapdistill.models.memory`.
"""

from __future__ import annotations

from collections.abc import Mapping

from snapdistill.models.memory import (
    MemoryEstimate,
    estimate_memory,
    part_params,
    saved_activation_bytes,
    size_text,
)


def estimate_run(common, *, student_overrides: Mapping | None = None,
                 fake_score: bool = False) -> tuple[dict, MemoryEstimate] | None:
    """(counts, estimate) of a distillation run from the teacher's JSON configs, before any weight loads; None for
    a single-file checkpoint (no configs to read). `fake_score`: the run also trains a copy of the teacher's UNet
    (--mode dmd)."""
    from snapdistill.distill.arch import student_config, unet_params
    from snapdistill.distill.stage import teacher_configs
    from snapdistill.models.loading import check_resolution, resolve_model, size_multiple

    model = resolve_model(common.teacher, allow_download=common.allow_download)
    configs = teacher_configs(common)
    if model.single_file or not configs["unet"] or not configs["vae"]:
        return None
    check_resolution(common.resolution, **configs)
    unet_cfg, vae_factor = configs["unet"], 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    size = common.resolution or unet_cfg["sample_size"] * vae_factor
    student_cfg = {**student_config(unet_cfg, common.student_arch), **(student_overrides or {})}
    counts = {"student_params": unet_params(student_cfg),
              "frozen_params": sum(part_params(model.path, p) for p in ("unet", "vae", "text_encoder")),
              "resolution": size, "size_multiple": size_multiple(**configs)}
    acts = {ckpt: saved_activation_bytes(student_cfg, size=size, vae_factor=vae_factor, checkpointing=ckpt)
            for ckpt in (False, True)}
    t = common.train
    estimate = estimate_memory(student_params=counts["student_params"], frozen_params=counts["frozen_params"],
                               mixed_precision=t.mixed_precision, optimizer=t.optimizer, ema=t.ema_decay > 0,
                               batch_size=t.batch_size, activation_bytes=acts,
                               gradient_checkpointing=t.gradient_checkpointing,
                               **(dict(second_params=unet_params(unet_cfg),
                                       second_activation_bytes=saved_activation_bytes(
                                           unet_cfg, size=size, vae_factor=vae_factor, checkpointing=False))
                                  if fake_score else {}))
    return counts, estimate


def describe(counts: dict, estimate: MemoryEstimate, common) -> list[str]:
    """The estimate as lines for the log."""
    t = common.train
    lines = [f"memory estimate per process (batch {t.batch_size}, {counts['resolution']} px, mixed precision "
             f"{t.mixed_precision}, {t.optimizer}, EMA {'on' if t.ema_decay > 0 else 'off'}, gradient checkpointing "
             f"{'on' if t.gradient_checkpointing else 'off'}):",
             f"  student parameters {counts['student_params']:,}; frozen teacher + VAE + text encoder "
             f"{counts['frozen_params']:,}"]
    lines += [f"  {name:<36}{size_text(value):>12}" for name, value in estimate.rows()]
    lines.append(f"  activations without / with gradient checkpointing: {size_text(estimate.activations_plain)} / "
                 f"{size_text(estimate.activations_checkpointed)}")
    return lines
