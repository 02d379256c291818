"""HPSv2 (Human Preference Score v2) without the `hpsv2` package.

HPSv2 is an open_clip ViT-H-14 fine-tune; its score is 100·cos(image, text). The architecture is
built from open_clip's own config with no pretrained tag (so nothing downloads), and the weights
come from the HPS checkpoint the user names. v2.0 and v2.1 scores are not comparable, so the
version is always explicit and travels with every number.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from snapdistill.errors import SnapdistillError
from snapdistill.metrics.aggregate import HPS_STYLES, mean_summary, style_summary
from snapdistill.metrics.cosine import pair_cosines

HPS_ARCH = "ViT-H-14"
HPS_VERSIONS = ("v2.0", "v2.1")
HPS_SIZE = 224
BENCHMARK_PROMPTS = 800  # per style
# OpenAI CLIP's normalisation (open_clip.constants.OPENAI_DATASET_MEAN/STD), which HPS uses.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def check_version(version: str) -> str:
    """The HPS version as given, when it is one we know."""
    if version not in HPS_VERSIONS:
        raise SnapdistillError(f"--hps-version must be one of {', '.join(HPS_VERSIONS)}, got {version!r}")
    return version


def version_in_filename(path: Path) -> str | None:
    """The version an official checkpoint name states (HPS_v2_compressed.pt, HPS_v2.1_compressed.pt), else None."""
    name = Path(path).name.lower()
    if re.search(r"v2[._]1", name):
        return "v2.1"
    if re.search(r"v2[._]0|hps_v2[_.](compressed|pt)", name):
        return "v2.0"
    return None


def hps_preprocess(image: Image.Image) -> torch.Tensor:
    """HPS's eval transform: to tensor, longest side to 224 (bicubic), zero-pad to a square, OpenAI mean/std.

    Padding splits as HPS does (left/top get the smaller half). Unlike HPS, an image whose longest side is
    already 224 is still padded to a square, since the ViT only takes 224x224.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    x = TF.to_tensor(image.convert("RGB"))
    h, w = x.shape[1:]
    scale = HPS_SIZE / max(h, w)
    new_h, new_w = round(h * scale), round(w * scale)  # Python's round, as HPS
    if (new_h, new_w) != (h, w):
        x = TF.resize(x, [new_h, new_w], InterpolationMode.BICUBIC, antialias=True)
    pad_h, pad_w = HPS_SIZE - new_h, HPS_SIZE - new_w
    x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0.0)
    return TF.normalize(x, OPENAI_MEAN, OPENAI_STD)


def read_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The weights of an HPS checkpoint: its `state_dict` (or the file itself), `module.` prefixes removed."""
    path = Path(checkpoint)
    if not path.is_file():
        raise SnapdistillError(f"{path}: HPS checkpoint not found (pass the HPS_v2*_compressed.pt file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file: a truncated download, a pickle with objects...
        raise SnapdistillError(f"{path}: cannot read HPS checkpoint ({e.__class__.__name__}: {e})") from e
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SnapdistillError(f"{path}: not an HPS checkpoint (expected a dict with a 'state_dict' of tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def arch_shapes(arch: str = HPS_ARCH) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of an open_clip architecture, built on the meta device (no memory, no download)."""
    import open_clip

    with torch.device("meta"):
        model = open_clip.create_model(arch, pretrained=None, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_keys(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], *, arch: str,
               source: Path) -> None:
    """Refuse weights that do not fit the architecture exactly, saying how many keys matched."""
    matched = sum(1 for k, shape in expected.items() if k in state and tuple(state[k].shape) == shape)
    extra = len(set(state) - set(expected))
    if matched != len(expected) or extra:
        raise SnapdistillError(
            f"{source}: {matched} of {len(expected)} {arch} keys match"
            + (f" ({extra} unknown keys)" if extra else "")
            + "; this is not an HPSv2 checkpoint for open_clip ViT-H-14"
        )


class HPSScorer:
    """Scores (image, prompt) pairs as 100·cos(image, text) with an HPS-weighted open_clip model."""

    def __init__(self, model, tokenizer, version: str, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.version = check_version(version)
        self.device = device

    @classmethod
    def from_model(cls, model, tokenizer, version: str, device: str = "cpu") -> HPSScorer:
        """Wrap an already built open_clip model (tests use a tiny random one)."""
        return cls(model, tokenizer, version, device)

    def score(self, images: list[Image.Image], prompts: list[str], batch_size: int = 32) -> np.ndarray:
        """HPS of each (image, prompt) pair, as float64 in [-100, 100]."""
        cos = pair_cosines(self.model, self.tokenizer, hps_preprocess, images, prompts, device=self.device,
                           batch_size=batch_size)
        return (100.0 * cos).numpy()


def load_hps_scorer(checkpoint: Path, version: str, device: str = "cpu", *, arch: str | None = None) -> HPSScorer:
    """ViT-H-14 (built without weights) loaded from an HPS checkpoint, refused unless every key fits."""
    import open_clip

    arch = arch or HPS_ARCH
    check_version(version)
    state = read_state_dict(checkpoint)
    # The key check runs against a meta-device build first, so a wrong file fails before ~4 GB are allocated.
    check_keys(state, arch_shapes(arch), arch=arch, source=Path(checkpoint))
    model = open_clip.create_model(arch, pretrained=None)
    model.load_state_dict(state, strict=True)
    return HPSScorer(model, open_clip.get_tokenizer(arch), version, device)


def hps_summary(rows: list[dict], scores: np.ndarray, version: str) -> dict:
    """Benchmark numbers of one run: per style by the chunk rule, plus the style average; a plain mean without styles."""
    by_style: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row, s in zip(rows, scores):
        by_style[row.get("style") or ""].append((int(row["index"]), float(s)))
    if set(by_style) == {""}:
        plain = mean_summary(scores)
        return {"version": version, "styles": {}, "average": plain["mean"], "n": plain["n"], "full_benchmark": False}
    if "" in by_style:
        raise SnapdistillError("a run mixes HPS benchmark images (with a style) and other images")
    # Chunks follow prompt order within each style, as the benchmark's own files do.
    ordered = {style: [s for _, s in sorted(pairs)] for style, pairs in sorted(by_style.items())}
    # Only the full benchmark (800 prompts in each of the 4 styles) compares with published numbers.
    full = set(ordered) == set(HPS_STYLES) and all(len(v) == BENCHMARK_PROMPTS for v in ordered.values())
    return {"version": version, **style_summary(ordered), "full_benchmark": full}
