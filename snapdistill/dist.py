"""Process state for `accelerate launch`: GPUs when there are any, else gloo on the CPU.

accelerate only forms a multi-process CPU group when asked for the CPU explicitly, so every entry
point gets its state from here (the first call fixes it for the process).
"""

from __future__ import annotations

import torch


def on_cpu() -> bool:
    """True on a machine without CUDA: distributed runs use gloo on the CPU."""
    return not torch.cuda.is_available()


def process_state():
    """accelerate's PartialState (rank, world size, device), CPU-aware."""
    from accelerate import PartialState

    return PartialState(cpu=on_cpu())
