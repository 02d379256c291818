"""A folder of images, each with a same-stem `.txt` caption (`cat.jpg` + `cat.txt`), searched recursively."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from snapdistill.data.sources.base import IMAGE_SUFFIXES, FileRef, Opened, Record, require_path


def _records(root: Path, images: list[Path]) -> Iterator[Record]:
    for path in images:
        txt = path.with_suffix(".txt")
        caption = txt.read_text(encoding="utf-8", errors="replace") if txt.is_file() else None
        key = path.relative_to(root).with_suffix("").as_posix()
        yield Record("folder", key, caption, FileRef(str(path)), {"file": path.relative_to(root).as_posix()})


def open_source(spec) -> Opened:
    root = require_path(Path(spec.path), "image folder", folder=True)
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return Opened(_records(root, images), [root], {"images": len(images)})
