"""What training a UNet needs per process, estimated before anything loads (`--dry-run`, `inspect`).

Parts: the student's fp32 weights, grads and optimiser states (8 bytes/param for AdamW, 2 for 8-bit AdamW), its
EMA copy, the frozen teacher, VAE and text encoder (in the mixed-precision dtype), and the activations kept for
the backward pass. Activations are counted by running the student's forward on the meta device (shapes only,
no memory, no compute) and adding up the tensors autograd saves, with attention as a fused kernel (PyTorch's
flash / memory-efficient SDPA, which keeps no attention matrix); with gradient checkpointing the block inputs
kept for recomputation are counted instead of what the blocks save. Transient buffers (the frozen teacher's
no-grad forwards, the VAE encode, the backward's own gradients of activations) are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

GIB = 1024 ** 3
DTYPE_BYTES = {"no": 4, "fp16": 2, "bf16": 2}
# Bytes of optimiser state per trained parameter (two moments): AdamW fp32, 8-bit AdamW block-wise quantised.
STATE_BYTES = {"adamw": 8, "adamw8bit": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process, by part. `activations` is with the chosen checkpointing, the other pair both ways."""

    weights: int
    grads: int
    optimizer: int
    ema: int
    frozen: int
    activations: int
    activations_plain: int
    activations_checkpointed: int
    second: int = 0          # a second trained network (a dmd fake score): weights, grads, AdamW and activations

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.ema + self.frozen + self.activations + self.second

    def rows(self) -> list[tuple[str, int]]:
        second = [("fake score network (train + acts)", self.second)] if self.second else []
        return [("student weights (fp32)", self.weights), ("grads (fp32)", self.grads),
                ("optimizer states", self.optimizer), ("EMA", self.ema), ("frozen teacher, VAE, text encoder", self.frozen),
                ("activations", self.activations), *second, ("total", self.total)]


def estimate_memory(*, student_params: int, frozen_params: int, mixed_precision: str, optimizer: str, ema: bool,
                    batch_size: int, activation_bytes: Mapping[bool, int], gradient_checkpointing: bool,
                    second_params: int = 0, second_activation_bytes: int = 0) -> MemoryEstimate:
    """The estimate from counts: `activation_bytes[checkpointing]` is per sample in fp32 (halved under mixed
    precision, where autocast keeps most saved tensors in 16 bits). A second trained network of `second_params`
    (a dmd fake score: fp32 weights, grads and torch AdamW, 16 bytes a parameter) adds its per-sample fp32
    `second_activation_bytes` (it is trained in fp32, without checkpointing, while the student's graph is held)."""
    scale = DTYPE_BYTES[mixed_precision] / 4
    acts = {ckpt: int(activation_bytes[ckpt] * batch_size * scale) for ckpt in (False, True)}
    return MemoryEstimate(
        weights=4 * student_params, grads=4 * student_params, optimizer=STATE_BYTES[optimizer] * student_params,
        ema=4 * student_params if ema else 0, frozen=DTYPE_BYTES[mixed_precision] * frozen_params,
        activations=acts[gradient_checkpointing], activations_plain=acts[False], activations_checkpointed=acts[True],
        second=16 * second_params + second_activation_bytes * batch_size)


class _FusedAttention(torch.autograd.Function):
    """Stands in for a fused (flash / memory-efficient) attention kernel on the meta device: it keeps q, k, v and
    the output for backward, never the [heads, N, N] probabilities that the meta device's math path would."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the count needs the forward only
        q, k, v, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


def _fused_sdpa(query, key, value, *args, **kwargs):
    return _FusedAttention.apply(query, key, value)


def saved_activation_bytes(unet_config: Mapping, *, size: int, vae_factor: int, text_len: int = 77,
                           checkpointing: bool = False) -> int:
    """Bytes autograd keeps for backward from one training forward of a UNet of `unet_config` on one sample of
    side `size`, counted on the meta device (fp32). Tensors saved twice are counted once."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(unet_config))
        side = size // vae_factor
        z = torch.empty(1, unet.config.in_channels, side, side)
        text = torch.empty(1, text_len, unet.config.cross_attention_dim)
        cond = (torch.empty(1, unet.config.time_cond_proj_dim) if unet.config.time_cond_proj_dim else None)
    unet.train()
    weights = {p.untyped_storage()._cdata for p in unet.parameters()}  # counted apart
    seen: dict[int, int] = {}  # storage -> bytes: views and tensors saved twice count once

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage._cdata not in weights:
            seen[storage._cdata] = storage.nbytes()
        return t

    inputs = []
    if checkpointing:
        unet.enable_gradient_checkpointing()
        # Count what each checkpointed block keeps: its inputs (autograd's saved tensors of a block are dropped).
        for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
            if block is not None:
                block.register_forward_pre_hook(lambda m, args, kw: inputs.append(args[0] if args else
                                                                                  kw["hidden_states"]),
                                                with_kwargs=True)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _fused_sdpa  # as PyTorch's fused kernels run on GPU and CPU
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            unet(z, 10, encoder_hidden_states=text, timestep_cond=cond, return_dict=False)
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    if checkpointing:
        for t in inputs:
            seen[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
    return sum(seen.values())


def part_params(folder, part: str) -> int:
    """Parameter count of a pipeline part (`unet`, `vae`, `text_encoder`) from its config.json, built on the meta
    device."""
    import json
    from pathlib import Path

    config = json.loads((Path(folder) / part / "config.json").read_text(encoding="utf-8"))
    with torch.device("meta"):
        if part == "text_encoder":
            from transformers import CLIPTextConfig, CLIPTextModel

            model = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith("_")}))
        else:
            from diffusers import AutoencoderKL, UNet2DConditionModel

            model = (UNet2DConditionModel if part == "unet" else AutoencoderKL).from_config(config)
    return sum(p.numel() for p in model.parameters())


def size_text(n: int) -> str:
    """Bytes as GiB, or MiB below 1 GiB."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2 ** 20:.1f} MiB"
