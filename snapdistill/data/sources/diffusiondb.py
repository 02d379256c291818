"""DiffusionDB 2M as it ships: `images/part-NNNNNN/` folders of images, each with `part-NNNNNN.json`
(image name -> `p` prompt, `se` seed, `c` cfg, `st` steps, `sa` sampler), and/or `metadata.parquet`.

The parquet (columns `image_name`, `prompt`, `part_id`, `seed`, `step`, `cfg`, `sampler`, `width`,
`height`, `user_name`, `timestamp`, `image_nsfw`, `prompt_nsfw`) wins when present, since only it
carries the NSFW scores. Only parts present on disk are read: users usually fetch a few of the 2,000.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from snapdistill.data.sources.base import (
    FileRef,
    Opened,
    Record,
    jsonable,
    parquet_columns,
    require_columns,
    require_path,
)
from snapdistill.errors import SnapdistillError

_PART = re.compile(r"^part-(\d{6})$")
_JSON_KEYS = {"p": "prompt", "se": "seed", "c": "cfg", "st": "step", "sa": "sampler"}
_NEEDED = ("image_name", "prompt", "part_id")


def local_parts(root: Path) -> dict[int, Path]:
    """Part folders on disk by part id."""
    images = root / "images"
    found = {}
    for path in sorted(images.iterdir()) if images.is_dir() else []:
        match = _PART.match(path.name)
        if match and path.is_dir():
            found[int(match.group(1))] = path
    return found


def _part_json(folder: Path) -> dict:
    for path in (folder / f"{folder.name}.json", folder.with_suffix(".json")):
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return {}


def _json_records(parts: dict[int, Path]) -> Iterator[Record]:
    for part_id, folder in parts.items():
        for name, entry in _part_json(folder).items():
            meta = {_JSON_KEYS.get(k, k): v for k, v in entry.items()}
            caption = meta.pop("prompt", None)
            yield Record("diffusiondb", Path(name).stem, caption, FileRef(str(folder / name)),
                         jsonable({**meta, "part_id": part_id, "image_name": name}))


def _parquet_records(path: Path, parts: dict[int, Path]) -> Iterator[Record]:
    import pyarrow.parquet as pq

    # Rows of parts not on disk are skipped, not rejected: they were never downloaded.
    table = pq.read_table(path, filters=[("part_id", "in", sorted(parts))])
    for row in table.to_pylist():
        caption = row.pop("prompt", None)
        name = row["image_name"]
        yield Record("diffusiondb", Path(name).stem, caption, FileRef(str(parts[int(row["part_id"])] / name)),
                     jsonable(row))


def open_source(spec) -> Opened:
    root = require_path(Path(spec.path), "DiffusionDB folder", folder=True)
    parts = local_parts(root)
    parquet = root / "metadata.parquet"
    if parquet.is_file():
        require_columns(parquet, parquet_columns(parquet), {c: c for c in _NEEDED})
        if not parts:
            raise SnapdistillError(f"{root}: metadata.parquet but no images/part-NNNNNN/ folders; unzip the parts "
                                   "you downloaded into images/")
        records = _parquet_records(parquet, parts)
    elif parts:
        records = _json_records(parts)
    else:
        raise SnapdistillError(f"{root}: no images/part-NNNNNN/ folders and no metadata.parquet; "
                               "point --source diffusiondb: at the DiffusionDB root")
    return Opened(records, [root], {"parts": sorted(parts), "metadata": "parquet" if parquet.is_file() else "json"})
