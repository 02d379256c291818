"""The models `recaption` uses, all loaded from local folders: a captioner and a CLIP for similarity.

* Captioner: any transformers image-to-text model folder (BLIP `BlipForConditionalGeneration`, BLIP-2,
  GIT, ...), i.e. whatever `AutoModelForImageTextToText` (`AutoModelForVision2Seq` before transformers 5)
  loads, with its processor. Greedy decoding, so a caption depends only on the image and the prompt.
* CLIP: an open_clip model, either a folder in open_clip's hub layout (`open_clip_config.json` plus
  weights) or a checkpoint file with its architecture name (`--clip-arch ViT-L-14`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from snapdistill.errors import SnapdistillError


def _auto_class():
    import transformers

    return getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq


def check_captioner(path: Path) -> None:
    """A one-line error unless `path` is a local folder holding a vision-to-text model."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SnapdistillError(f"{path}: no config.json; --captioner needs a local transformers captioner folder "
                               "(e.g. a saved BLIP: BlipForConditionalGeneration)")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError, json.JSONDecodeError) as e:
        raise SnapdistillError(f"{path}: unreadable model config ({e})") from e
    if type(config) not in _auto_class()._model_mapping:
        raise SnapdistillError(f"{path}: '{config.model_type}' is not a vision-to-text model; give a BLIP, BLIP-2 "
                               "or other image-to-text captioner folder")


class Captioner:
    """Captions a batch of PIL images with a local image-to-text model."""

    def __init__(self, path: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 prompt: str | None = None, max_new_tokens: int = 40):
        from transformers import AutoProcessor

        check_captioner(path)
        self.model = _auto_class().from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.device, self.dtype, self.prompt, self.max_new_tokens = device, dtype, prompt, max_new_tokens

    @torch.no_grad()
    def __call__(self, images: list) -> list[str]:
        text = [self.prompt] * len(images) if self.prompt else None
        inputs = self.processor(images=images, text=text, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]


class ClipSimilarity:
    """cos(image, text) with an open_clip model, for `keep-better`."""

    def __init__(self, path: Path, *, arch: str | None = None, device: str = "cpu"):
        import open_clip

        path = Path(path)
        if path.is_dir() and (path / "open_clip_config.json").is_file():
            name, pretrained = f"local-dir:{path}", None
        elif path.is_file() and arch:
            name, pretrained = arch, str(path)
        else:
            raise SnapdistillError(f"{path}: --clip needs an open_clip folder (open_clip_config.json + weights) "
                                   "or a checkpoint file with --clip-arch NAME")
        model, _, self.preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.device = device

    def __call__(self, images: list, texts: list[str]) -> np.ndarray:
        from snapdistill.metrics.cosine import pair_cosines

        return pair_cosines(self.model, self.tokenizer, self.preprocess, images, texts, device=self.device,
                            batch_size=max(1, len(images))).numpy()
