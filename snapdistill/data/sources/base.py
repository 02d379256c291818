"""What a source adapter yields: a `Record` with a lazy reference to its image.

Records travel to worker processes, so they hold only small picklable references (a file path, a tar
member's offset); the bytes are read where the image is decoded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from snapdistill.errors import SnapdistillError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass(frozen=True)
class FileRef:
    """An image file on disk."""

    path: str

    def load(self) -> bytes:
        return Path(self.path).read_bytes()


@dataclass(frozen=True)
class TarRef:
    """A member of a tar file, read by offset so the tar is never scanned twice."""

    path: str
    offset: int
    size: int

    def load(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.path}: member at {self.offset} is cut short")
        return data


@dataclass(frozen=True)
class PILRef:
    """An image made in memory (the toy world); it is small enough to travel as is."""

    image: Any

    def load(self):
        return self.image


@dataclass(frozen=True)
class ToyRef:
    """A toy-world image, drawn where it is loaded (in a worker): the stream itself holds only its number, so
    skipping finished records on a resume costs nothing and drawing scales with `--workers`."""

    split: str
    index: int
    seed: int

    def load(self):
        from snapdistill.toy.world import toy_image

        return toy_image(self.split, self.index, seed=self.seed)


@dataclass
class Record:
    """One image–text pair as a source sees it, before any filtering."""

    source: str                          # source kind, e.g. "coco"
    key: str                             # the source's own key (file stem, image id...)
    caption: str | None
    image: FileRef | TarRef | PILRef | ToyRef | None
    meta: dict = field(default_factory=dict)  # the source's metadata, kept in the output json
    fault: str | None = None             # set when the source already knows the record is unusable
    detail: str = ""                     # why, for rejects.jsonl
    group: str | None = None             # records one source row fans out (COCO's captions=all) share it:
                                         # duplicate-image filtering never drops one for another


@dataclass
class Opened:
    """A validated source: its records (lazy), the paths it reads and facts for the manifest."""

    records: Iterator[Record]
    inputs: list[Path]
    info: dict = field(default_factory=dict)
    apart: list[Path] | None = None      # what --out must stay out of, when not all of `inputs`

    def out_apart(self) -> list[Path]:
        """The paths an `--out` may not be, contain or lie inside."""
        return self.inputs if self.apart is None else self.apart


def require_path(path: Path, what: str, *, folder: bool | None = None) -> Path:
    """`path`, or a one-line error saying it is missing (or of the wrong kind)."""
    path = Path(path)
    if not path.exists():
        raise SnapdistillError(f"{path}: {what} not found; check the path given to --source")
    if folder is True and not path.is_dir():
        raise SnapdistillError(f"{path}: {what} must be a folder")
    if folder is False and not path.is_file():
        raise SnapdistillError(f"{path}: {what} must be a file")
    return path


def jsonable(value: Any) -> Any:
    """Metadata as plain JSON: NaN becomes null, dates become ISO strings, bytes are dropped."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items() if not isinstance(v, (bytes, bytearray))}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    return value


def image_index(folder: Path) -> dict[str, Path]:
    """Every image under `folder` by its stem (first in sorted order wins)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(path.stem, path)
    return found


def missing(source: str, key: str, caption: str | None, path: Path, meta: dict | None = None) -> Record:
    """A record whose image file is not there."""
    return Record(source, key, caption, None, meta or {}, fault="missing_file", detail=str(path))


def parquet_columns(path: Path) -> list[str]:
    """Column names of a parquet file, or a one-line error when it is not one."""
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception as e:  # pyarrow raises several types for "not a parquet file"
        raise SnapdistillError(f"{path}: not a readable parquet file ({e})") from e


def parquet_rows(path: Path, filters=None) -> Iterator[dict]:
    """Rows of a parquet file as dicts, read in batches so large files stay out of memory."""
    import pyarrow.parquet as pq

    if filters is not None:
        yield from pq.read_table(path, filters=filters).to_pylist()
        return
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def require_columns(path: Path, have: list[str], need: dict[str, str]) -> None:
    """A one-line error naming the first column of `need` (option -> column) that `path` lacks."""
    for option, column in need.items():
        if column not in have:
            raise SnapdistillError(
                f"{path}: no column '{column}' (columns: {', '.join(have[:12])}); name it with {option}=COLUMN"
            )
