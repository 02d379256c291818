"""The toy world: seeded, captioned 32 px images of one flat-coloured shape.

Each image shows one large object. Its attributes are a colour, a shape, a position and a background;
captions read like prompts ("a photo of a red circle on the left, white background") and always name
all four, so `parse_caption` recovers the true attributes of any caption. The set of all captions is
split once and for all into train and val by a hash of the caption text, so the two never overlap;
images carry a little jitter (exact position, size, shade) drawn from a per-item seed.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Iterator

from PIL import Image, ImageDraw

TOY_SIZE = 32  # native pixel size of a toy image
_SUPER = 4  # shapes are drawn at 4x and box-filtered down, so edges are anti-aliased

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (150, 55, 195),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"left": (-8, 0), "right": (8, 0), "top": (0, -8), "bottom": (0, 8), "center": (0, 0)}
BACKGROUNDS = {"white": 245, "black": 15, "gray": 128}

# Attribute name -> its values, in the fixed order the judge's heads use.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "position": tuple(POSITIONS),
    "background": tuple(BACKGROUNDS),
}

_PREFIXES = ("", "a photo of ", "an illustration of ", "a picture of ", "a drawing of ")
_POS_PHRASES = {
    "left": ("on the left", "at the left"),
    "right": ("on the right", "at the right"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "center": ("in the center", "in the middle"),
}
_BG_PHRASES = ("{bg} background", "on a {bg} background", "against a {bg} background")
_FORMS = (
    "{prefix}a {color} {shape} {pos}, {bgp}",
    "{prefix}a {color} {shape} {pos} {bgp}",
    "{bg} background, {prefix}a {color} {shape} {pos}",
    "{prefix}a {shape} in {color} {pos}, {bgp}",
)
_VAL_EVERY = 8  # one caption in 8 (by hash) belongs to val


def caption_split(caption: str) -> str:
    """'val' or 'train': the fixed split a caption belongs to (a hash of its text)."""
    digest = hashlib.sha256(caption.encode("utf-8")).digest()
    return "val" if int.from_bytes(digest[:4], "little") % _VAL_EVERY == 0 else "train"


def _captions_for(attrs: dict[str, str]) -> list[str]:
    out = []
    for form in _FORMS:
        bg_phrases = ("",) if "{bgp}" not in form else _BG_PHRASES
        for prefix in _PREFIXES:
            for pos in _POS_PHRASES[attrs["position"]]:
                for bgp in bg_phrases:
                    out.append(
                        form.format(
                            prefix=prefix,
                            color=attrs["color"],
                            shape=attrs["shape"],
                            pos=pos,
                            bg=attrs["background"],
                            bgp=bgp.format(bg=attrs["background"]),
                        )
                    )
    return out


def all_attributes() -> list[dict[str, str]]:
    """Every attribute combination, in a fixed order."""
    return [
        {"color": c, "shape": s, "position": p, "background": b}
        for c in ATTRIBUTES["color"]
        for s in ATTRIBUTES["shape"]
        for p in ATTRIBUTES["position"]
        for b in ATTRIBUTES["background"]
    ]


@functools.lru_cache(maxsize=2)
def split_captions(split: str) -> tuple[str, ...]:
    """All captions of one split ('train' or 'val'), in a fixed, seeded shuffled order."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    caps = [c for a in all_attributes() for c in _captions_for(a) if caption_split(c) == split]
    random.Random(f"toy-{split}-order").shuffle(caps)
    return tuple(caps)


def toy_val_prompts(n: int) -> list[str]:
    """The first `n` captions of the fixed val split (cycling when `n` exceeds the split)."""
    caps = split_captions("val")
    return [caps[i % len(caps)] for i in range(n)]


_WORD = re.compile(r"[a-z]+")
_POS_WORDS = {
    "left": "left",
    "right": "right",
    "top": "top",
    "bottom": "bottom",
    "center": "center",
    "middle": "center",
}


def parse_caption(caption: str) -> dict[str, str]:
    """The attributes a caption names: {'color', 'shape', 'position', 'background'}."""
    words = _WORD.findall(caption.lower())
    found = {
        "color": [w for w in words if w in COLORS],
        "shape": [w for w in words if w in SHAPES],
        "position": [_POS_WORDS[w] for w in words if w in _POS_WORDS],
        "background": [w for w in words if w in BACKGROUNDS],
    }
    if any(len(v) != 1 for v in found.values()):
        raise ValueError(f"not a toy caption (each attribute must be named once): {caption!r}")
    return {k: v[0] for k, v in found.items()}


def render(attrs: dict[str, str], *, seed: int | None = None) -> Image.Image:
    """Draw the image of `attrs`; `seed` adds jitter in position, size and shade (None: canonical)."""
    rng = random.Random(seed) if seed is not None else None

    def jitter(lo: float, hi: float) -> float:
        return rng.uniform(lo, hi) if rng else 0.0

    bg = int(BACKGROUNDS[attrs["background"]] + jitter(-8, 8))
    color = tuple(int(min(255, max(0, v + jitter(-12, 12)))) for v in COLORS[attrs["color"]])
    dx, dy = POSITIONS[attrs["position"]]
    cx = TOY_SIZE / 2 + dx + jitter(-1.5, 1.5)
    cy = TOY_SIZE / 2 + dy + jitter(-1.5, 1.5)
    half = (14 if rng is None else rng.uniform(12, 16)) / 2

    size = TOY_SIZE * _SUPER
    img = Image.new("RGB", (size, size), (bg, bg, bg))
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = ((cx - half) * _SUPER, (cy - half) * _SUPER, (cx + half) * _SUPER, (cy + half) * _SUPER)
    shape = attrs["shape"]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif shape == "square":
        inset = half * 0.1 * _SUPER  # a square of the same visual weight as the circle
        draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=color)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return img.resize((TOY_SIZE, TOY_SIZE), Image.BOX)


def _item_seed(split: str, seed: int, index: int) -> int:
    digest = hashlib.sha256(f"toy/{split}/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def toy_caption(split: str, index: int, *, seed: int = 0) -> tuple[str, dict[str, str]]:
    """Item `index` of a split without its image: (caption, attributes)."""
    caps = split_captions(split)
    caption = caps[_item_seed(split, seed, index) % len(caps)]
    return caption, parse_caption(caption)


def toy_image(split: str, index: int, *, seed: int = 0) -> Image.Image:
    """Item `index`'s image alone (the one `toy_pair` returns)."""
    _, attrs = toy_caption(split, index, seed=seed)
    return render(attrs, seed=_item_seed(split, seed, index))


def toy_pair(split: str, index: int, *, seed: int = 0) -> tuple[Image.Image, str, dict[str, str]]:
    """Item `index` of a split: (image, caption, attributes); it depends only on (split, seed, index)."""
    caption, attrs = toy_caption(split, index, seed=seed)
    return render(attrs, seed=_item_seed(split, seed, index)), caption, attrs


def toy_pairs(
    split: str, n: int, *, seed: int = 0, start: int = 0
) -> Iterator[tuple[Image.Image, str, dict]]:
    """Items `start .. start+n-1` of a split as (PIL image, caption, attributes)."""
    for i in range(start, start + n):
        yield toy_pair(split, i, seed=seed)
