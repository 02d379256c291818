"""Where the shipped toy weights live, and loaders that say how to rebuild them when they are broken."""

from __future__ import annotations

from pathlib import Path

from snapdistill.models.toy_weights import WEIGHTS_DIR, broken_weights, check_weights_folder, toy_teacher_dir

_JUDGE_FILES = ("config.json", "judge.safetensors", "manifest.json")


def toy_judge_dir(root: Path | None = None) -> Path:
    """The shipped toy judge folder, checked for completeness (SnapdistillError when broken)."""
    return check_weights_folder(Path(root) if root else WEIGHTS_DIR / "judge", _JUDGE_FILES, "judge")


def load_toy_teacher(root: Path | None = None):
    """The toy teacher as a float32 stock `StableDiffusionPipeline`."""
    from diffusers import StableDiffusionPipeline

    folder = toy_teacher_dir(root)
    try:
        return StableDiffusionPipeline.from_pretrained(folder)
    except Exception as e:
        raise broken_weights(folder, "teacher") from e


def load_judge(device: str = "cpu", root: Path | None = None):
    """The shipped toy judge, in eval mode."""
    from snapdistill.toy.judge import load_judge_from

    folder = toy_judge_dir(root)
    try:
        return load_judge_from(folder, device=device)
    except Exception as e:
        raise broken_weights(folder, "judge") from e
