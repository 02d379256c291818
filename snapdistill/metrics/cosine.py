"""cos(image, text) of (image, prompt) pairs under an open_clip model: the one loop that the CLIP score,
HPSv2 and recaption's keep-better share (they differ only in preprocessing and in how cos is scaled)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.nn import functional as F


@torch.no_grad()
def pair_cosines(model, tokenizer, preprocess: Callable[[Image.Image], torch.Tensor], images: list, prompts: list[str],
                 *, device: str = "cpu", batch_size: int = 32) -> torch.Tensor:
    """cos(image_i, prompt_i) for each pair, as a float64 CPU tensor (features compared in float32)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    out = []
    for lo in range(0, len(images), batch_size):
        x = torch.stack([preprocess(im) for im in images[lo : lo + batch_size]]).to(device)
        tokens = tokenizer(list(prompts[lo : lo + batch_size])).to(device)
        img = F.normalize(model.encode_image(x).float(), dim=-1)
        txt = F.normalize(model.encode_text(tokens).float(), dim=-1)
        out.append((img * txt).sum(-1).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
