"""HPDv2, the HPSv2 training set: `train.json` (entries with `prompt`, `image_path` (or `file_path`) and
`human_preference`, or `rank` in test.json) plus its image folder.

Options: `images=DIR` (default: the folder named like the json, e.g. `train/`) and `pick=preferred`
(the image people preferred, the default) or `all` (every image of every entry).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from snapdistill.data.sources.base import FileRef, Opened, Record, jsonable, require_path
from snapdistill.errors import SnapdistillError


def preferred(entry: dict) -> int:
    """Index of the preferred image: highest `human_preference`, else lowest `rank` (first on ties)."""
    if entry.get("human_preference"):
        prefs = entry["human_preference"]
        return prefs.index(max(prefs))
    if entry.get("rank"):
        ranks = entry["rank"]
        return ranks.index(min(ranks))
    return 0


def _paths(entry: dict) -> list[str]:
    paths = entry.get("image_path") or entry.get("file_path") or []
    return [paths] if isinstance(paths, str) else list(paths)


def _records(entries: list, images: Path, pick_all: bool) -> Iterator[Record]:
    for n, entry in enumerate(entries):
        paths = _paths(entry)
        best = preferred(entry)
        chosen = range(len(paths)) if pick_all else range(best, best + 1) if paths else range(0)
        for i in chosen:
            meta = {"entry": n, "image_index": i, "preferred": i == best, "image_path": paths[i],
                    **{k: entry[k] for k in ("human_preference", "rank", "user_hash") if k in entry}}
            yield Record("hpsv2", Path(paths[i]).stem, entry.get("prompt"), FileRef(str(images / paths[i])),
                         jsonable(meta))


def open_source(spec) -> Opened:
    path = require_path(Path(spec.path), "HPDv2 json", folder=False)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SnapdistillError(f"{path}: not readable as JSON ({e}); give HPDv2's train.json") from e
    if not isinstance(entries, list) or (entries and not isinstance(entries[0], dict)):
        raise SnapdistillError(f"{path}: expected a list of HPDv2 entries (prompt, image_path, human_preference)")
    if entries and "prompt" not in entries[0]:
        raise SnapdistillError(f"{path}: entries have no 'prompt'; give HPDv2's train.json or test.json")
    images = require_path(Path(spec.options.get("images") or path.with_suffix("")), "HPDv2 image folder (images=DIR)",
                          folder=True)
    pick = spec.options.get("pick", "preferred")
    if pick not in ("preferred", "all"):
        raise SnapdistillError(f"--source {spec.path}: pick= must be 'preferred' or 'all', got '{pick}'")
    return Opened(_records(entries, images, pick == "all"), [path, images], {"entries": len(entries), "pick": pick})
