"""The built-in toy world: `toy:N` gives N procedural captioned images (options `split=`, `seed=`)."""

from __future__ import annotations

from collections.abc import Iterator

from snapdistill.data.sources.base import Opened, Record, ToyRef
from snapdistill.errors import SnapdistillError


def _records(split: str, n: int, seed: int) -> Iterator[Record]:
    from snapdistill.toy.world import toy_caption

    for i in range(n):  # the image is drawn where it is loaded: the stream carries captions and numbers only
        caption, attrs = toy_caption(split, i, seed=seed)
        yield Record("toy", f"{split}-{seed}-{i:07d}", caption, ToyRef(split, i, seed), {"attributes": attrs})


def open_source(spec) -> Opened:
    try:
        n = int(spec.path)
    except ValueError:
        raise SnapdistillError(f"--source toy:{spec.path}: expected toy:N with N a number of images") from None
    split = spec.options.get("split", "train")
    if n <= 0 or split not in ("train", "val"):
        raise SnapdistillError(f"--source toy:{spec.path}: N must be positive and split= train or val")
    seed = int(spec.options.get("seed", 0))
    return Opened(_records(split, n, seed), [], {"n": n, "split": split, "seed": seed})
