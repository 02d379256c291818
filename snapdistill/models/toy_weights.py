"""Where the shipped toy teacher lives, checked for completeness; a leaf module, so that resolving the name
`toy` (`snapdistill.models.loading`) needs nothing from `snapdistill.toy`."""

from __future__ import annotations

from pathlib import Path

from snapdistill.errors import SnapdistillError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "toy" / "weights"

# Files a toy teacher folder must hold (a stock diffusers StableDiffusionPipeline folder).
_TEACHER_FILES = (
    "model_index.json",
    "manifest.json",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)


def broken_weights(path: Path, command: str) -> SnapdistillError:
    return SnapdistillError(
        f"{path}: missing or corrupted toy weights; rebuild with `snapdistill toy {command}`"
    )


def _check_safetensors(path: Path, command: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if keys:
                f.get_slice(keys[-1])
    except Exception as e:  # safetensors raises several types on truncated or garbled files
        raise broken_weights(path, command) from e
    if not keys:
        raise broken_weights(path, command)


def check_weights_folder(folder: Path, files: tuple[str, ...], command: str) -> Path:
    for rel in files:
        path = folder / rel
        if not path.is_file() or path.stat().st_size == 0:
            raise broken_weights(path, command)
        if path.suffix == ".safetensors":
            _check_safetensors(path, command)
    return folder


def toy_teacher_dir(root: Path | None = None) -> Path:
    """The shipped toy teacher folder, checked for completeness (SnapdistillError when broken)."""
    return check_weights_folder(Path(root) if root else WEIGHTS_DIR / "teacher", _TEACHER_FILES, "teacher")
