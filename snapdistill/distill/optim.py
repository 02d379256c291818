"""The optimiser of the training loop: AdamW, or bitsandbytes' 8-bit AdamW (an optional extra, CUDA only).

8-bit AdamW keeps both moment estimates in 8 bits (block-wise quantised), 2 bytes per parameter instead of 8.
"""

from __future__ import annotations

import importlib.util

import torch

from snapdistill.errors import SnapdistillError

OPTIMIZERS = ("adamw", "adamw8bit")


def check_optimizer(name: str) -> str:
    """Refuse an unknown --optimizer, and adamw8bit without bitsandbytes or without a CUDA device."""
    if name not in OPTIMIZERS:
        raise SnapdistillError(f"unknown --optimizer '{name}'; choose one of {', '.join(OPTIMIZERS)}")
    if name == "adamw8bit":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise SnapdistillError("--optimizer adamw8bit needs bitsandbytes: pip install 'snapdistill[bnb]' "
                                   "(or use --optimizer adamw)")
        if not torch.cuda.is_available():
            raise SnapdistillError("--optimizer adamw8bit needs a CUDA device; use --optimizer adamw on the CPU")
    return name


def make_optimizer(name: str, params, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (torch) or AdamW8bit (bitsandbytes), with the same betas and eps."""
    check_optimizer(name)
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
