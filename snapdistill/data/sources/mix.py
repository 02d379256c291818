"""Mixing several sources into one deterministic stream.

* A source with neither `weight=` nor `count=` is used in full.
* `count=N` takes the first N records of a source (before filtering), or all it has when fewer.
* Sources with a `weight` share the output in proportion to their weights: they stop together when
  the first of them runs out, so the weights stay the output proportions.

A seeded RNG draws the source of each next record (with probability proportional to the weight, 1
for sources without one), so sources interleave through the shards.

A single source streams in its own order. The stream depends only on the sources and the seed, so
every array job (`--shard-index`) computes the same stream and takes its own slice of it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from snapdistill.data.sources import SourceSpec
from snapdistill.data.sources.base import Record


def mix(streams: list[tuple[SourceSpec, Iterator[Record]]], *, seed: int) -> Iterator[tuple[int, Record]]:
    """Interleave `streams`; yields (source number, record)."""
    its = [iter(itertools.islice(it, spec.count)) for spec, it in streams]
    if len(its) == 1:
        yield from ((0, rec) for rec in its[0])
        return
    rng = random.Random(f"snapdistill-mix-{seed}")
    active = list(range(len(its)))
    while active:
        i = rng.choices(active, weights=[streams[j][0].weight or 1.0 for j in active])[0]
        rec = next(its[i], None)
        if rec is not None:
            yield i, rec
        elif streams[i][0].weight is not None:
            active = [j for j in active if streams[j][0].weight is None]
        else:
            active.remove(i)
