"""Resolving `--teacher`/`--model` to a local pipeline, and loading it offline.

Accepted: a known name (`toy`, `sd15`, `sd21`, `sd21-base`), a diffusers pipeline folder, or a single
`.safetensors`/`.ckpt` file. Names resolve to `$SNAPDISTILL_MODELS/<name>` (a pipeline folder) or to the
local Hugging Face cache. Nothing downloads unless `allow_download=True`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from snapdistill.errors import SnapdistillError

# Hugging Face repository ids of the known teachers.
HUB_IDS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
}
KNOWN_NAMES = ("toy", *HUB_IDS)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# What a pipeline folder needs so `StableDiffusionPipeline.from_pretrained` works offline.
_HUB_PATTERNS = ["model_index.json", "*/config.json", "scheduler/*", "tokenizer/*", "*/*.safetensors"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are: a pipeline folder, or a single checkpoint file."""

    spec: str
    path: Path
    single_file: bool = False


def models_dir() -> Path:
    """The local model folder: `$SNAPDISTILL_MODELS`, else `~/.cache/snapdistill/models`."""
    return Path(os.environ.get("SNAPDISTILL_MODELS", Path.home() / ".cache" / "snapdistill" / "models"))


def _missing_weights(name: str) -> SnapdistillError:
    repo = HUB_IDS[name]
    return SnapdistillError(
        f"{name}: weights not found in {models_dir() / name} nor in the Hugging Face cache; get them with "
        f"`hf download {repo} --local-dir {models_dir() / name}` (or rerun with --allow-download)"
    )


def _root_cause(e: BaseException) -> str:
    """The first line of the innermost exception behind `e` (the network error behind the hub's own)."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


def _from_hub(name: str, *, allow_download: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(
            HUB_IDS[name], allow_patterns=_HUB_PATTERNS, local_files_only=not allow_download
        )
    except LocalEntryNotFoundError as e:
        if allow_download:  # the hub was asked and did not answer: say why, not "rerun with --allow-download"
            raise SnapdistillError(f"{name}: download of {HUB_IDS[name]} failed ({_root_cause(e)}); check the "
                                   f"network, or get the weights with `hf download {HUB_IDS[name]} --local-dir "
                                   f"{models_dir() / name}`") from e
        raise _missing_weights(name) from e
    except Exception as e:  # network or auth errors, only reachable with --allow-download
        raise SnapdistillError(f"{name}: download of {HUB_IDS[name]} failed ({e})") from e
    return Path(path)


def resolve_model(spec: str, *, allow_download: bool = False) -> ResolvedModel:
    """Turn a teacher name, pipeline folder or checkpoint file into a local path (never downloads
    unless `allow_download`)."""
    path = Path(spec).expanduser()
    if spec == "toy":
        from snapdistill.models.toy_weights import toy_teacher_dir

        return ResolvedModel(spec, toy_teacher_dir())
    if spec in HUB_IDS:
        local = models_dir() / spec
        if (local / "model_index.json").is_file():
            return ResolvedModel(spec, local)
        return ResolvedModel(spec, _from_hub(spec, allow_download=allow_download))
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise SnapdistillError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
        return ResolvedModel(spec, path)
    if path.suffix in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise SnapdistillError(f"{path}: checkpoint file not found")
        return ResolvedModel(spec, path, single_file=True)
    if path.exists() or os.sep in spec:
        raise SnapdistillError(f"{spec}: not a pipeline folder nor a .safetensors/.ckpt file")
    raise SnapdistillError(
        f"unknown teacher '{spec}'; known names: {', '.join(KNOWN_NAMES)} (or a pipeline folder / checkpoint file)"
    )


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """`fp32`/`fp16`/`bf16` to a torch dtype; fp16 needs a GPU."""
    if name not in DTYPES:
        raise SnapdistillError(f"unknown dtype '{name}'; choose one of {', '.join(DTYPES)}")
    if name == "fp16" and not device.startswith("cuda"):
        raise SnapdistillError("fp16 needs a CUDA device; use --dtype fp32 or bf16 on the CPU")
    return DTYPES[name]


def default_device() -> str:
    """cuda when available, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(model: ResolvedModel, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
                  allow_download: bool = False):
    """Load a `StableDiffusionPipeline` (no safety checker, quiet progress bar) from a resolved model."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Loading bars of every component would bury the stage's own progress bar.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        if model.single_file:
            pipe = StableDiffusionPipeline.from_single_file(
                str(model.path), dtype=dtype, local_files_only=not allow_download,
                safety_checker=None, requires_safety_checker=False,
            )
        else:
            pipe = StableDiffusionPipeline.from_pretrained(
                str(model.path), dtype=dtype, local_files_only=True,
                safety_checker=None, requires_safety_checker=False,
            )
    except (OSError, ValueError) as e:
        hint = (
            "a single-file checkpoint needs its base model's config in the Hugging Face cache"
            + ("; fetching it failed" if allow_download else " (or --allow-download)")
            if model.single_file
            else "the folder is incomplete; compare it with a `save_pretrained` pipeline folder"
        )
        raise SnapdistillError(f"{model.path}: could not load the pipeline ({str(e).splitlines()[0]}); {hint}") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def size_multiple(*, unet: dict, vae: dict) -> int:
    """The side every image must be a multiple of: vae_scale_factor × 2^(down blocks − 1) (64 for SD)."""
    vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return vae_factor * 2 ** (len(unet["down_block_types"]) - 1)


def check_resolution(resolution: int | None, *, unet: dict, vae: dict) -> None:
    """Refuse a --resolution the UNet cannot take (no-op without one, or without configs to read)."""
    if resolution is None or not unet or not vae:
        return
    multiple = size_multiple(unet=unet, vae=vae)
    if resolution % multiple:
        raise SnapdistillError(f"--resolution {resolution} does not fit this teacher: it must be a multiple of "
                               f"{multiple} (VAE factor × 2^(UNet down blocks − 1))")


def native_size(pipe) -> int:
    """The side a pipeline was trained at: its UNet's sample size × the VAE factor."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def model_fingerprint(path: Path) -> str:
    """A cheap identity of the model's files (relative path, size, mtime), so that images of a model retrained
    in place are never mistaken for the new model's. Hashing the weights themselves would read gigabytes."""
    import hashlib

    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
