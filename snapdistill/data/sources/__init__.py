"""Source adapters, one small module per raw layout, and the `--source` spec that names them.

A spec reads `KIND:PATH[,option=value...]`, e.g. `coco:annotations/captions_train2017.json,count=5000`
or `toy:1000`. Every kind takes `weight=` or `count=` (see `mix.py`; with neither, the whole source is
used); the other options are the kind's own (`images=DIR` and so on, listed in `OPTIONS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from snapdistill.data.sources.base import Opened, Record
from snapdistill.errors import SnapdistillError

# Options each kind accepts besides weight/count; the defaults live with the adapters.
OPTIONS: dict[str, tuple[str, ...]] = {
    "coco": ("images", "captions"),
    "laion-art": ("images", "caption"),
    "diffusiondb": (),
    "hpsv2": ("images", "pick"),
    "folder": (),
    "table": ("image", "caption", "root"),
    "toy": ("split", "seed"),
}


@dataclass(frozen=True)
class SourceSpec:
    """One `--source`: which adapter, which path, how much of it, and the adapter's options."""

    kind: str
    path: str
    weight: float | None = None    # share of the output among weighted sources
    count: int | None = None       # take the first N records
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """KIND:PATH, how messages name this source (two specs may share it)."""
        return f"{self.kind}:{self.path}"

    def describe(self) -> str:
        """The spec written back out: KIND:PATH then weight/count and the options, sorted."""
        extra = {"weight": self.weight, "count": self.count, **dict(sorted(self.options.items()))}
        return ",".join([self.label, *(f"{k}={v}" for k, v in extra.items() if v is not None)])


def source_labels(specs: list[SourceSpec]) -> list[str]:
    """How the manifest's counts name each `--source`: its position and its spec, unique even for two
    sources of the same KIND:PATH with other options (e.g. `0:coco:caps.json,captions=first`)."""
    return [f"{i}:{spec.describe()}" for i, spec in enumerate(specs)]


def _number(text: str, cast: Callable, flag: str, spec: str):
    try:
        value = cast(text)
    except ValueError:
        raise SnapdistillError(f"--source {spec}: {flag}={text} is not a number") from None
    if value <= 0:
        raise SnapdistillError(f"--source {spec}: {flag} must be positive, got {text}")
    return value


def parse_spec(text: str, defaults: dict | None = None) -> SourceSpec:
    """Parse `KIND:PATH[,key=value...]`; `defaults` fill options the spec leaves out."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in OPTIONS or not rest:
        raise SnapdistillError(
            f"--source {text}: expected KIND:PATH with KIND one of {', '.join(OPTIONS)} (e.g. coco:captions_train2017.json)"
        )
    path, *pairs = rest.split(",")
    options = {k: v for k, v in (defaults or {}).items() if k in OPTIONS[kind] and v is not None}
    weight, count = None, None
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise SnapdistillError(f"--source {text}: option '{pair}' must read key=value")
        if key == "weight":
            weight = _number(value, float, key, text)
        elif key == "count":
            count = _number(value, int, key, text)
        elif key in OPTIONS[kind]:
            options[key] = value
        else:
            known = ", ".join(("weight", "count") + OPTIONS[kind])
            raise SnapdistillError(f"--source {text}: unknown option '{key}' for {kind} (known: {known})")
    if weight is not None and count is not None:
        raise SnapdistillError(f"--source {text}: give weight= or count=, not both")
    return SourceSpec(kind, path, weight, count, options)


def _adapters() -> dict[str, Callable[[SourceSpec], Opened]]:
    from snapdistill.data.sources import coco, diffusiondb, folder, hpsv2, laion, table, toy

    return {
        "coco": coco.open_source,
        "laion-art": laion.open_source,
        "diffusiondb": diffusiondb.open_source,
        "hpsv2": hpsv2.open_source,
        "folder": folder.open_source,
        "table": table.open_source,
        "toy": toy.open_source,
    }


def open_source(spec: SourceSpec) -> Opened:
    """Validate a source (bad paths and layouts fail here, before anything is written) and open it."""
    return _adapters()[spec.kind](spec)


__all__ = ["OPTIONS", "Opened", "Record", "SourceSpec", "open_source", "parse_spec", "source_labels"]
