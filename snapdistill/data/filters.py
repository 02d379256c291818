"""Why a record is dropped: one small check per filter, each switched on by its setting.

Checks on a single record (`RECORD_CHECKS`, `SIZE_CHECKS`) run in the worker processes. Checks that
depend on what came before (duplicate images, repeated captions) keep state and run in the main process,
in stream order, so the result never depends on the number of workers. A score that a source lacks
(e.g. no `pwatermark` in COCO) passes its filter: it filters only where the source has a value.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from snapdistill.data.sources.base import Record

NSFW_KEYS = ("punsafe", "image_nsfw", "prompt_nsfw")  # LAION, DiffusionDB
WATERMARK_KEYS = ("pwatermark",)
AESTHETIC_KEYS = ("aesthetic", "AESTHETIC_SCORE", "aesthetic_score")
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's decompression-bomb limit (~89.5M pixels)


@dataclass(frozen=True)
class FilterConfig:
    """Every filter setting; None (or False) switches that filter off."""

    max_pixels: int | None = MAX_PIXELS     # width x height from the header; larger is never decoded
    min_side: int | None = None            # shorter original side, pixels
    min_aspect: float | None = None        # width / height
    max_aspect: float | None = None
    max_nsfw: float | None = None          # highest of the source's NSFW probabilities
    max_watermark: float | None = None     # LAION pwatermark
    min_aesthetic: float | None = None
    min_caption_chars: int | None = None
    max_caption_chars: int | None = None
    dedup: bool = True                     # drop exact duplicate images (sha256 of the output pixels)
    max_caption_repeats: int | None = None  # keep at most N records with the same caption


def normalize_caption(caption: str | None) -> str:
    """The caption as written to `txt`: NFC, whitespace runs made single spaces, trimmed."""
    if not isinstance(caption, str):
        return ""
    return " ".join(unicodedata.normalize("NFC", caption).split())


def _score(meta: dict, keys: tuple[str, ...], pick: Callable = max) -> float | None:
    values = [float(meta[k]) for k in keys if isinstance(meta.get(k), (int, float)) and not isinstance(meta[k], bool)]
    return pick(values) if values else None


def no_caption(rec: Record, cfg: FilterConfig) -> str | None:
    return "no_caption" if not normalize_caption(rec.caption) else None


def caption_length(rec: Record, cfg: FilterConfig) -> str | None:
    n = len(normalize_caption(rec.caption))
    too_short = cfg.min_caption_chars is not None and n < cfg.min_caption_chars
    too_long = cfg.max_caption_chars is not None and n > cfg.max_caption_chars
    return "caption_length" if too_short or too_long else None


def nsfw(rec: Record, cfg: FilterConfig) -> str | None:
    value = _score(rec.meta, NSFW_KEYS) if cfg.max_nsfw is not None else None
    return "nsfw" if value is not None and value > cfg.max_nsfw else None


def watermark(rec: Record, cfg: FilterConfig) -> str | None:
    value = _score(rec.meta, WATERMARK_KEYS) if cfg.max_watermark is not None else None
    return "watermark" if value is not None and value > cfg.max_watermark else None


def aesthetic(rec: Record, cfg: FilterConfig) -> str | None:
    value = _score(rec.meta, AESTHETIC_KEYS, min) if cfg.min_aesthetic is not None else None
    return "aesthetic" if value is not None and value < cfg.min_aesthetic else None


# Checks on metadata alone, run before any image is read (cheapest first).
RECORD_CHECKS: tuple[Callable[[Record, FilterConfig], str | None], ...] = (
    no_caption, caption_length, nsfw, watermark, aesthetic,
)


def too_large(width: int, height: int, cfg: FilterConfig) -> str | None:
    return "too_large" if cfg.max_pixels is not None and width * height > cfg.max_pixels else None


def min_side(width: int, height: int, cfg: FilterConfig) -> str | None:
    return "min_side" if cfg.min_side is not None and min(width, height) < cfg.min_side else None


def aspect_ratio(width: int, height: int, cfg: FilterConfig) -> str | None:
    ratio = width / max(height, 1)
    out = (cfg.min_aspect is not None and ratio < cfg.min_aspect) or (cfg.max_aspect is not None and ratio > cfg.max_aspect)
    return "aspect_ratio" if out else None


# Checks on the original size, read from the image header before decoding.
SIZE_CHECKS: tuple[Callable[[int, int, FilterConfig], str | None], ...] = (too_large, min_side, aspect_ratio)


def first_reason(checks, *args) -> str | None:
    """The first check that rejects, or None."""
    for check in checks:
        reason = check(*args)
        if reason:
            return reason
    return None


def caption_key(caption: str) -> str:
    """Captions that differ only in case or spacing count as the same caption."""
    return " ".join(caption.lower().split())


class Deduper:
    """Stateful filters: exact duplicate images and a cap on repeated captions (in stream order).

    Records of one `group` (one source row fanned out into several captions, as COCO's captions=all)
    are never duplicates of each other; an image repeated under another group, or none, is.
    """

    _NO_GROUP = object()

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        self.hashes: dict[str, object] = {}  # sha256 -> group of the first accepted record
        self.captions: dict[str, int] = {}

    def check(self, sha256: str, caption: str, group: str | None = None) -> str | None:
        if self.cfg.dedup and sha256 in self.hashes and (group is None or self.hashes[sha256] != group):
            return "duplicate_image"
        cap = self.cfg.max_caption_repeats
        if cap is not None and self.captions.get(caption_key(caption), 0) >= cap:
            return "caption_repeats"
        return None

    def add(self, sha256: str, caption: str, group: str | None = None) -> None:
        """Record an accepted sample."""
        if self.cfg.dedup:
            self.hashes.setdefault(sha256, self._NO_GROUP if group is None else group)
        if self.cfg.max_caption_repeats is not None:
            key = caption_key(caption)
            self.captions[key] = self.captions.get(key, 0) + 1


def hps_reason(score: float, threshold: float | None) -> str | None:
    """The HPSv2 filter: 100·cos(image, caption) below the threshold."""
    return "hps" if threshold is not None and score < threshold else None
