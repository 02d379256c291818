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
from snapdistill.data.shards import ALLOW_LOST, ShardList, decode_sample, manifest_shards
from snapdistill.errors import SnapdistillError

SHUFFLE_BUFFER = 256


def find_shards(folder: Path, *, allow_lost: bool = False, stage: str = "") -> ShardList:
    """The shards a finished build-data/recaption/cache-latents folder's manifest lists, checked against the disk
    (`snapdistill.data.shards.manifest_shards`: a missing or resized shard is one line unless `allow_lost`)."""
    listed = manifest_shards(Path(folder), allow_lost=allow_lost, stage=stage)
    if not listed.paths:
        raise SnapdistillError(f"{folder}: none of its shards is there; build them with `snapdistill build-data`")
    return listed


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


def lost_summary(epoch: int, expected: dict[str, int], read: dict[str, int], first: str) -> tuple[int, int, str]:
    """(lost, expected, message) of one epoch over shards whose sample counts the manifest lists: the samples lost
    are those listed but not read (unreadable, or in a part of the shard that is gone), named by shard."""
    total = sum(expected.values())
    short = {name: (read.get(name, 0), n) for name, n in expected.items() if read.get(name, 0) < n}
    lost = sum(n - got for got, n in short.values())
    where = ", ".join(f"{Path(name).name}: {got} of {n} read" for name, (got, n) in list(short.items())[:3])
    more = f" and {len(short) - 3} more shards" if len(short) > 3 else ""
    why = f"; first error: {first}" if first else ""
    return lost, total, f"{lost} of {total} training samples lost in epoch {epoch} ({where}{more}{why})"


class ShardPairs:
    """An endless, seeded stream of (pixels, caption) pairs over the shards, epoch after epoch.

    A sample without `jpg` or `txt`, or whose image does not decode, and the rest of a tar cut short,
    are skipped and counted; the count goes to stderr once per epoch, and more than 10% of an epoch
    unreadable stops training with one line. Skipping depends only on the bytes, so the order of the
    readable samples is still a pure function of (seed, epoch). From cached shards, a sample without its
    `latent.npy` and `txt_emb.npy`, or whose arrays do not load with the recorded shapes, is skipped the same way.
    """

    def __init__(self, shards: list[str] | ShardList, *, size: int, seed: int = 0, cached: dict | None = None,
                 allow_lost: bool = False):
        # cached: the shards' cache record; then samples are (latent, text embedding) and batches are tensors.
        # From a ShardList, each epoch counts the samples read per shard against the manifest's counts: the
        # warning counts samples lost, and more than 10% lost stops training unless `allow_lost`.
        self.expected: dict[str, int] | None = None
        if isinstance(shards, ShardList):
            if all(shards.expected.get(p.name) is not None for p in shards.paths):
                self.expected = {str(p): shards.expected[p.name] for p in shards.paths}
            shards = [str(p) for p in shards.paths]
        self.shards, self.size, self.seed, self.cached = list(shards), size, seed, cached
        self.allow_lost = allow_lost

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
        read: dict[str, int] = {}
        for raw in ds:
            try:
                sample = self._decode(raw)
            except Exception as exn:  # one damaged sample must not stop a long run
                bad.add(f"{raw.get('__url__')}: {raw.get('__key__')}", exn)
                if not self.allow_lost:
                    bad.check()
                continue
            bad.good += 1
            read[raw.get("__url__")] = read.get(raw.get("__url__"), 0) + 1
            buffer.append(sample)
            if len(buffer) >= SHUFFLE_BUFFER:
                yield buffer.pop(rng.randrange(len(buffer)))
        self._report(epoch, order, bad, read)
        rng.shuffle(buffer)
        yield from buffer

    def _report(self, epoch: int, order: list[str], bad: _BadSamples, read: dict[str, int]) -> None:
        """The epoch's one line: samples lost against the manifest's counts (of this process's shards), or, where
        the counts are unknown, the samples found unreadable; more than 10% stops training unless allowed."""
        import webdataset as wds

        if self.expected is None:
            if not self.allow_lost:
                bad.check(final=True)
            if bad.bad:
                print(f"warning: {bad.summary()}; skipped", file=sys.stderr, flush=True)
            return
        mine = list(wds.split_by_node(order))
        lost, total, message = lost_summary(epoch, {u: self.expected[u] for u in mine}, read, bad.first)
        if lost > MAX_BAD_SHARE * total and not self.allow_lost:
            raise SnapdistillError(f"{message}: more than {MAX_BAD_SHARE:.0%}; copy or rebuild the shards, or pass "
                                   f"{ALLOW_LOST} to train on what is left")
        if lost:
            print(f"warning: {message}; skipped", file=sys.stderr, flush=True)

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

    def __init__(self, shards: list[str] | ShardList, *, seed: int = 0, allow_lost: bool = False):
        super().__init__(shards, size=0, seed=seed, allow_lost=allow_lost)

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
