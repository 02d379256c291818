"""MS-COCO 2017 captions: `annotations/captions_{train,val}2017.json` plus the image folder.

Options: `images=DIR` (default: `train2017/` or `val2017/` beside the `annotations/` folder) and
`captions=first` (one record per image with its first caption in file order, the default) or `all`
(one record per caption).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from snapdistill.data.sources.base import FileRef, Opened, Record, require_path
from snapdistill.errors import SnapdistillError


def default_images(json_path: Path) -> Path:
    """COCO's layout: `annotations/captions_train2017.json` next to `train2017/`."""
    match = re.match(r"captions_(\w+)\.json$", json_path.name)
    split = match.group(1) if match else json_path.stem
    return json_path.parent.parent / split


def load(json_path: Path) -> dict:
    """The parsed file, or a one-line error when it is not COCO captions."""
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SnapdistillError(f"{json_path}: not readable as JSON ({e}); give a COCO captions_*.json") from e
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise SnapdistillError(
            f"{json_path}: not a COCO captions file (no 'annotations' list); use captions_train2017.json"
        )
    return data


def _records(data: dict, images: Path, per_caption: bool) -> Iterator[Record]:
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    infos = data.get("images") or [{"id": i} for i in by_image]
    for info in infos:
        anns = by_image.get(info["id"], [])
        name = info.get("file_name") or f"{info['id']:012d}.jpg"
        meta = {k: info[k] for k in ("id", "file_name", "coco_url", "license") if k in info}
        chosen = anns if per_caption else anns[:1]
        group = f"coco:{images.name}/{name}" if per_caption else None
        if not chosen:
            yield Record("coco", str(info["id"]), None, FileRef(str(images / name)), meta)
        for ann in chosen:
            key = f"{info['id']}_{ann['id']}" if per_caption else str(info["id"])
            yield Record("coco", key, ann.get("caption"), FileRef(str(images / name)),
                         {**meta, "annotation_id": ann.get("id")}, group=group)


def open_source(spec) -> Opened:
    json_path = require_path(Path(spec.path), "COCO captions file", folder=False)
    data = load(json_path)
    images = require_path(Path(spec.options.get("images") or default_images(json_path)), "COCO image folder",
                          folder=True)
    mode = spec.options.get("captions", "first")
    if mode not in ("first", "all"):
        raise SnapdistillError(f"--source {spec.path}: captions= must be 'first' or 'all', got '{mode}'")
    info = {"images": len(data.get("images") or []), "annotations": len(data["annotations"]), "captions": mode}
    return Opened(_records(data, images, mode == "all"), [json_path, images], info)
