"""A table of image paths and captions: `.jsonl`, `.csv` or `.parquet`.

Options: `image=COLUMN` and `caption=COLUMN` (defaults from `--image-column`/`--caption-column`, else
`image` and `caption`) and `root=DIR` (relative paths start there; default: the table's folder). Every
other column is kept as metadata.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from snapdistill.data.sources.base import (
    FileRef,
    Opened,
    Record,
    jsonable,
    parquet_columns,
    parquet_rows,
    require_columns,
    require_path,
)
from snapdistill.errors import SnapdistillError


def _jsonl_rows(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise SnapdistillError(f"{path}:{n}: invalid JSON ({e.msg})") from e


def _csv_rows(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)


def _columns(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return parquet_columns(path)
    first = next(_csv_rows(path) if suffix == ".csv" else _jsonl_rows(path), None)
    return list(first or {})


_READERS = {".parquet": parquet_rows, ".csv": _csv_rows, ".jsonl": _jsonl_rows}


def _records(path: Path, root: Path, image_col: str, caption_col: str) -> Iterator[Record]:
    for i, row in enumerate(_READERS[path.suffix.lower()](path)):
        meta = jsonable({k: v for k, v in row.items() if k not in (image_col, caption_col)})
        rel = row.get(image_col)
        key = Path(str(rel)).stem if rel else f"row{i}"
        if not rel:
            yield Record("table", key, row.get(caption_col), None, meta, fault="missing_file", detail="no image path")
            continue
        yield Record("table", f"{i}-{key}", row.get(caption_col), FileRef(str(root / str(rel))), meta)


def open_source(spec) -> Opened:
    path = require_path(Path(spec.path), "table", folder=False)
    if path.suffix.lower() not in _READERS:
        raise SnapdistillError(f"{path}: a table must be .jsonl, .csv or .parquet")
    image_col = spec.options.get("image", "image")
    caption_col = spec.options.get("caption", "caption")
    require_columns(path, _columns(path), {"image": image_col, "caption": caption_col})
    root = require_path(Path(spec.options.get("root") or path.parent), "image root", folder=True)
    # The default root, the table's own folder, is where outputs usually go too; only the listed images are read
    # from it, so an --out there is refused only when the root was given (root=).
    apart = [path, root] if spec.options.get("root") else [path]
    return Opened(_records(path, root, image_col, caption_col), [path, root], {"image": image_col, "caption": caption_col},
                  apart)
