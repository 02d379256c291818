"""Optional speed-ups of a loaded pipeline for sampling (`sample --channels-last`, `--compile`), off by default.

- channels-last: the UNet's and the decoder's weights in NHWC, PyTorch's memory format for convolutions (it pays
  where convolutions dominate: on CPU, the decoders; see the README's speed section for measured figures).
- compile: `torch.compile` of the UNet and of the decoder's network (`vae.decoder`), as diffusers' docs compile a
  pipeline, with inductor's weight freezing (inference only). The first batch pays the compilation (60-90 s for the SD 1.5 UNet on 2 CPU cores); a
  batch of another size compiles again. Inductor, torch.compile's default backend, needs a C++ compiler on CPU and
  Triton on CUDA: `check_compile` refuses in one line, before any model loads, where that is missing.

Both may move an image by a grey level (other kernels reduce in another order), so `sample` records them with its
settings and refuses to finish a folder with them changed.
"""

from __future__ import annotations

import os
import shutil

import torch

from snapdistill.errors import SnapdistillError


def compile_problem(device: str) -> str | None:
    """Why torch.compile's default backend cannot run on `device`; None when it can."""
    if str(device).startswith("cuda"):
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed (pip install triton)"
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None and shutil.which("c++") is None and shutil.which("clang++") is None:
        return f"no C++ compiler found ({compiler}; set CXX or install g++)"
    return None


def check_compile(device: str) -> None:
    """Refuse `--compile` in one line where its backend is missing."""
    if problem := compile_problem(device):
        raise SnapdistillError(f"--compile needs torch.compile's inductor backend on {device}: {problem}; "
                               "or leave --compile out")


def compiled(module: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile(module)` for inference, with inductor's weight freezing: it folds the weights into the compiled
    graph as constants and pre-packs them for its CPU convolutions. Measured on the SD 1.5 layout's UNet (256 px,
    batch 1, 2 CPU cores): 1.06 s a call against 1.38 s uncompiled; compiled without freezing, 2.12 s."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # process-wide: it applies to graphs compiled from here on
    return torch.compile(module)


def speed_up(pipe, *, channels_last: bool = False, compile: bool = False) -> dict:
    """Apply the asked speed-ups to `pipe` in place; return the settings that record them."""
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        # The modules, not the pipeline's methods: diffusers' own recipe, and hooks on pipe.unet still see every call.
        pipe.unet = compiled(pipe.unet)
        pipe.vae.decoder = compiled(pipe.vae.decoder)
    return {"channels_last": bool(channels_last), "compile": bool(compile)}


def compile_failure(error: BaseException) -> SnapdistillError | None:
    """The one-line error for a compilation that failed while sampling (a backend present but broken)."""
    if type(error).__module__.startswith("torch._dynamo"):  # BackendCompilerFailed wraps inductor's own errors
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return SnapdistillError(f"--compile failed while compiling the pipeline ({first[:200]}); "
                                "leave --compile out")
    return None
