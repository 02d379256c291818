"""CLIP score: 100·max(cos(image, text), 0) with an open_clip model loaded from a local file, averaged.

The architecture is an open_clip config name (ViT-g-14, ViT-L-14...) or a JSON config file of one;
the weights are the file the user names, so nothing downloads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from snapdistill.errors import SnapdistillError
from snapdistill.metrics.cosine import pair_cosines


def resolve_arch(name: str) -> str:
    """An open_clip config name; a `.json` config file is registered first, under its file stem."""
    import open_clip

    path = Path(name)
    if path.suffix == ".json":
        if not path.is_file():
            raise SnapdistillError(f"{path}: open_clip model config not found")
        open_clip.add_model_config(path)
        name = path.stem
    if name not in open_clip.list_models():
        raise SnapdistillError(f"--clip-model {name!r} is not an open_clip architecture (e.g. ViT-L-14, ViT-g-14)")
    return name


def eval_transform(model):
    """open_clip's own eval preprocessing for `model` (resize the shortest side, centre crop, its mean/std)."""
    from open_clip.model import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**get_model_preprocess_cfg(model)), is_train=False)


class ClipScorer:
    """Per-image CLIP score of (image, prompt) pairs."""

    def __init__(self, model, tokenizer, preprocess, device: str = "cpu", name: str = ""):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.device = device
        self.name = name

    @classmethod
    def from_model(cls, model, tokenizer, device: str = "cpu", name: str = "") -> ClipScorer:
        """Wrap an already built open_clip model (tests use a tiny random one)."""
        return cls(model, tokenizer, eval_transform(model), device, name)

    def score(self, images: list[Image.Image], prompts: list[str], batch_size: int = 32) -> np.ndarray:
        """100·max(cos, 0) per pair: negative similarity counts as no agreement, as in the CLIP-score paper."""
        cos = pair_cosines(self.model, self.tokenizer, self.preprocess, images, prompts, device=self.device,
                           batch_size=batch_size)
        return (100.0 * cos.clamp(min=0)).numpy()


def load_clip_scorer(name: str, checkpoint: Path, device: str = "cpu") -> ClipScorer:
    """An open_clip model of architecture `name` with the weights of `checkpoint` (strict)."""
    import open_clip

    arch = resolve_arch(name)
    if not Path(checkpoint).is_file():
        raise SnapdistillError(f"{checkpoint}: CLIP checkpoint not found")
    try:
        model = open_clip.create_model(arch, pretrained=str(checkpoint))
    except Exception as e:  # strict loading: a wrong file names its missing/unexpected keys; or unreadable
        first = str(e).strip().splitlines()[0][:300]
        raise SnapdistillError(f"{checkpoint}: does not fit open_clip {arch} ({first})") from e
    return ClipScorer(model, open_clip.get_tokenizer(arch), eval_transform(model), device, name=arch)
