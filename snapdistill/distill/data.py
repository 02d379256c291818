"""Training pairs from WebDataset shards (keys `jpg`, `txt`), turned into latent batches.

Shards written by `cache-latents` also carry each sample's latent and text embedding
(`snapdistill.data.latent_cache`); with `cached=` the stream reads those instead of the image and caption,
in the same order.

The order is a pure function of (seed, epoch), so a resumed run sees exactly the samples an
uninterrupted one would: it skips the `consumed` samples it already trained on. With several
processes, webdataset's `split_by_node` gives each rank its own shards.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from snapdistill.data.images import image_tensor
from snapdistill.data.shards import decode_sample
from snapdistill.errors import SnapdistillError
from snapdistill.manifest import require_manifest

SHUFFLE_BUFFER = 256


def find_shards(folder: Path) -> list[str]:
    """The `*.tar` shards of a finished build-data/recaption folder, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SnapdistillError(f"{folder}: shard folder not found; build it with `snapdistill build-data`")
    require_manifest(folder)
    shards = sorted(str(p) for p in folder.glob("*.tar"))
    if not shards:
        raise SnapdistillError(f"{folder}: no shards found (*.tar); build them with `snapdistill build-data`")
    return shards


MAX_BAD_SHARE = 0.1  # more unreadable samples than this share of an epoch stops training
MIN_CHECKED = 100    # ... checked as it goes once this many samples were looked at, and at the epoch's end


class _BadSamples:
    """Unreadable samples of one epoch: counted, the first one kept to name in messages."""

    def __init__(self, epoch: int):
        self.epoch, self.bad, self.good, self.first = epoch, 0, 0, ""

    def add(self, where: str, exn: BaseException) -> None:
        self.bad += 1
        if not self.first:
            why = " ".join(f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}".split())
            self.first = f"{where}: {why}"[:300]

    def handler(self, exn: BaseException) -> bool:
        """webdataset's handler convention (like `warn_and_continue`): a damaged tar is counted, and
        reading goes on with the next readable member or shard."""
        self.add("shard", exn)
        return True

    def summary(self) -> str:
        total = self.bad + self.good
        return f"{self.bad} of {total} training samples unreadable in epoch {self.epoch} (first: {self.first})"

    def check(self, *, final: bool = False) -> None:
        total = self.bad + self.good
        if (final or total >= MIN_CHECKED) and self.bad > MAX_BAD_SHARE * total:
            raise SnapdistillError(f"{self.summary()}: more than {MAX_BAD_SHARE:.0%}; "
                                   "rebuild the shards with build-data")


class ShardPairs:
    """An endless, seeded stream of (pixels, caption) pairs over the shards, epoch after epoch.

    A sample without `jpg` or `txt`, or whose image does not decode, and the rest of a tar cut short,
    are skipped and counted; the count goes to stderr once per epoch, and more than 10% of an epoch
    unreadable stops training with one line. Skipping depends only on the bytes, so the order of the
    readable samples is still a pure function of (seed, epoch). From cached shards, a sample without its
    `latent.npy` and `txt_emb.npy`, or whose arrays do not load with the recorded shapes, is skipped the same way.
    """

    def __init__(self, shards: list[str], *, size: int, seed: int = 0, cached: dict | None = None):
        # cached: the shards' cache record; then samples are (latent, text embedding) and batches are tensors.
        self.shards, self.size, self.seed, self.cached = list(shards), size, seed, cached

    def _decode(self, raw: dict) -> tuple:
        if self.cached is None:
            return decode_sample(raw)
        from snapdistill.data.latent_cache import decode_cached

        return decode_cached(raw, self.cached)

    def _item(self, sample: tuple) -> tuple:
        return sample if self.cached is not None else (image_tensor(sample[0], self.size), sample[1])

    def _collate(self, items: list[tuple]) -> tuple:
        if self.cached is not None:
            return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items]).float()
        return torch.stack([p for p, _ in items]), [c for _, c in items]

    def _epoch(self, epoch: int) -> Iterator[tuple]:
        import webdataset as wds

        rng = random.Random(self.seed * 100_003 + epoch)
        order = self.shards[:]
        rng.shuffle(order)
        bad = _BadSamples(epoch)
        ds = wds.WebDataset(order, shardshuffle=False, nodesplitter=wds.split_by_node,
                            workersplitter=wds.split_by_worker, empty_check=False, handler=bad.handler)
        buffer: list = []
        for raw in ds:
            try:
                sample = self._decode(raw)
            except Exception as exn:  # one damaged sample must not stop a long run
                bad.add(f"{raw.get('__url__')}: {raw.get('__key__')}", exn)
                bad.check()
                continue
            bad.good += 1
            buffer.append(sample)
            if len(buffer) >= SHUFFLE_BUFFER:
                yield buffer.pop(rng.randrange(len(buffer)))
        bad.check(final=True)
        if bad.bad:
            print(f"warning: {bad.summary()}; skipped", file=sys.stderr, flush=True)
        rng.shuffle(buffer)
        yield from buffer

    def batches(self, batch_size: int, *, skip: int = 0) -> Iterator[tuple[torch.Tensor, list[str]]]:
        """Batches of (pixels [B,3,S,S], captions), after skipping the first `skip` samples; from cached shards,
        (latents [B,C,h,w], text embeddings [B,L,D]), both fp32."""
        epoch, seen, items = 0, 0, []
        while True:
            got = 0
            for sample in self._epoch(epoch):
                got += 1
                seen += 1
                if seen <= skip:
                    continue
                items.append(self._item(sample))
                if len(items) == batch_size:
                    yield self._collate(items)
                    items = []
            if got == 0:
                raise SnapdistillError("this process received no training samples; use at least as many shards as processes")
            epoch += 1


class ShardCaptions(ShardPairs):
    """The same seeded stream as `ShardPairs`, of captions alone: only each sample's `txt` is read, no image is
    decoded (a prompt-only route). Batches are lists of captions."""

    def __init__(self, shards: list[str], *, seed: int = 0):
        super().__init__(shards, size=0, seed=seed)

    def _decode(self, raw: dict) -> tuple:
        if "txt" not in raw:
            raise ValueError("no txt member")
        return (raw["txt"].decode("utf-8"),)

    def _item(self, sample: tuple) -> tuple:
        return sample

    def _collate(self, items: list[tuple]) -> list[str]:
        return [c for (c,) in items]


class PromptLines(ShardCaptions):
    """The caption stream of a list of prompts (a prompt file): each epoch a shuffle that is a pure function of
    (seed, epoch), batched and skipped on resume by `ShardPairs.batches`. With several processes each takes every
    world-th prompt."""

    def __init__(self, prompts: list[str], *, seed: int = 0, rank: int = 0, world: int = 1):
        super().__init__([], seed=seed)
        self.prompts = list(prompts)[rank::world]
        if not self.prompts:
            raise SnapdistillError(f"{world} processes and {len(prompts)} prompts: each process needs at least one")

    def _epoch(self, epoch: int) -> Iterator[tuple]:
        order = self.prompts[:]
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        yield from ((prompt,) for prompt in order)
