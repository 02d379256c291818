"""LAION-art as img2dataset writes it, or a plain parquet of captions plus a local image folder.

* A folder of img2dataset webdataset output: `00000.tar` (members `KEY.jpg`, `KEY.txt`, `KEY.json`) with
  `00000.parquet` and `00000_stats.json` beside it. The parquet lists every row, failed downloads too
  (`status` != "success"); those become `download_failed` rejects. LAION's metadata columns
  (`similarity`, `punsafe`, `pwatermark`, `aesthetic`, ...) are kept; `exif` is dropped for size.
* A `.parquet` file with a caption column (`TEXT`, `caption` or `text`, or `caption=COLUMN`) and an
  image folder (`images=DIR`, default: the folder of the same stem) holding row `i` as `{i:09d}.*` or `{i}.*`.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

from snapdistill.data.shards import member_name_problem
from snapdistill.data.sources.base import (
    FileRef,
    Opened,
    Record,
    TarRef,
    image_index,
    jsonable,
    parquet_columns,
    parquet_rows,
    require_columns,
    require_path,
)
from snapdistill.errors import SnapdistillError

_IMAGE_EXT = ("jpg", "jpeg", "png", "webp")
_DROP = ("exif",)
_SPLIT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's key/extension split


def scan_tar(path: Path) -> dict[str, dict]:
    """img2dataset samples of one tar by key: image reference, caption text and json metadata.

    A member whose name is absolute, climbs with `..` or holds a backslash or NUL marks its sample
    `bad_key` (why, under "bad") and none of that sample's members is read.
    """
    samples: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            problem = member_name_problem(member.name)
            match = _SPLIT.match(member.name)
            key, ext = match.groups() if match else (member.name, "")
            if problem:
                if "bad" not in samples.get(key, {}):  # the first bad member names the reason
                    samples[key] = {"bad": f"{member.name}: {problem}"}
                continue
            if not match or "bad" in samples.get(key, {}):
                continue
            sample = samples.setdefault(key, {})
            if ext in _IMAGE_EXT:
                sample["image"] = TarRef(str(path), member.offset_data, member.size)
            elif ext in ("txt", "json"):
                text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                sample[ext] = text
    return samples


def _meta(row: dict) -> dict:
    return jsonable({k: v for k, v in row.items() if k not in _DROP})


def _tar_records(tar: Path) -> Iterator[Record]:
    samples = scan_tar(tar)
    parquet = tar.with_suffix(".parquet")
    rows = parquet_rows(parquet) if parquet.is_file() else ({"key": k, "status": "success"} for k in samples)
    listed = set()
    for row in rows:
        key = str(row.get("key"))
        listed.add(key)
        if "bad" in samples.get(key, {}):
            yield Record("laion-art", key, None, None, _meta(row), fault="bad_key", detail=samples[key]["bad"])
            continue
        if row.get("status", "success") != "success":
            detail = f"{row.get('status')}: {row.get('error_message') or ''}".strip()
            yield Record("laion-art", key, row.get("caption"), None, _meta(row), fault="download_failed", detail=detail)
            continue
        sample = samples.get(key, {})
        meta = _meta({**row, **json.loads(sample.get("json") or "{}")})
        caption = sample["txt"] if "txt" in sample else meta.get("caption")
        if "image" not in sample:
            yield Record("laion-art", key, caption, None, meta, fault="missing_file", detail=f"{tar}: no image for {key}")
            continue
        yield Record("laion-art", key, caption, sample["image"], meta)
    for key, sample in samples.items():  # bad names the parquet does not list are still reported
        if "bad" in sample and key not in listed:
            yield Record("laion-art", key, None, None, {}, fault="bad_key", detail=sample["bad"])


def _stats(folder: Path) -> dict:
    totals: dict[str, int] = {}
    for path in sorted(folder.glob("*_stats.json")):
        stats = json.loads(path.read_text(encoding="utf-8"))
        for name in ("count", "successes", "failed_to_download", "failed_to_resize"):
            totals[name] = totals.get(name, 0) + int(stats.get(name) or 0)
    return totals


def _open_folder(folder: Path) -> Opened:
    tars = sorted(folder.glob("*.tar"))
    if not tars:
        raise SnapdistillError(f"{folder}: no .tar shards; expected img2dataset webdataset output (00000.tar, ...)")

    def records() -> Iterator[Record]:
        for tar in tars:
            yield from _tar_records(tar)

    return Opened(records(), [folder], {"tars": len(tars), "img2dataset_stats": _stats(folder)})


def _open_parquet(path: Path, spec) -> Opened:
    have = parquet_columns(path)
    caption = spec.options.get("caption") or next((c for c in ("TEXT", "caption", "text") if c in have), "TEXT")
    require_columns(path, have, {"caption": caption})
    images = require_path(Path(spec.options.get("images") or path.with_suffix("")), "LAION image folder (images=DIR)",
                          folder=True)

    def records() -> Iterator[Record]:
        index = image_index(images)
        for i, row in enumerate(parquet_rows(path)):
            found = index.get(f"{i:09d}") or index.get(str(i))
            ref = FileRef(str(found)) if found else None
            fault = None if found else "missing_file"
            yield Record("laion-art", f"{i:09d}", row.get(caption), ref, _meta(row), fault=fault,
                         detail="" if found else f"{images}: no image for row {i}")

    return Opened(records(), [path, images], {"caption_column": caption})


def open_source(spec) -> Opened:
    path = require_path(Path(spec.path), "LAION folder or parquet")
    return _open_parquet(path, spec) if path.is_file() else _open_folder(path)
