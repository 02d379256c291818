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


def average_gradients(module: torch.nn.Module) -> None:
    """Replace each gradient of `module` by its mean over the processes (nothing to do in one process): a module the
    training loop does not wrap in DDP (a dmd route's fake score network) stays the same on every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)
