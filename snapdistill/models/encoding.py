"""Encoders every stage shares: the frozen text encoder's hidden states (cached per caption) and the VAE's clean
latents. Training, `cache-latents`, `distill-decoder` and the bench all encode through these, so cached and
live encodings agree."""

from __future__ import annotations

from collections import OrderedDict

import torch

from snapdistill.models.small_decoder import to_latents


class TextEmbeddings:
    """The frozen text encoder's hidden states per caption, cached (LRU) since captions repeat."""

    def __init__(self, tokenizer, text_encoder, *, max_items: int = 20_000):
        self.tokenizer, self.text_encoder, self.max_items = tokenizer, text_encoder, max_items
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0].float()  # fp32 even from a bf16 encoder

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(c for c in captions if c not in self.cache))
        if missing:
            for caption, emb in zip(missing, self._encode(missing)):
                self.cache[caption] = emb
        for c in captions:
            self.cache.move_to_end(c)
        out = torch.stack([self.cache[c] for c in captions])
        while len(self.cache) > self.max_items:
            self.cache.popitem(last=False)
        return out


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Clean latents x0 = mean of the VAE posterior × scaling_factor (deterministic; an AutoencoderTiny's own
    latents, see `snapdistill.models.small_decoder.to_latents`), in fp32 whatever the VAE's dtype."""
    return to_latents(vae, pixels.to(device=vae.device, dtype=vae.dtype)).float()
