"""Metrics over the image folders that `snapdistill sample` writes.

One module per metric: `hps` (HPSv2), `clip_score`, `fid`, `toy` (the toy world's judge); `aggregate`
turns per-image numbers into reported ones. The helpers here read a sample run the same way for all
of them: `prompts.jsonl` gives each image's prompt, seed and file, and a missing image is an error,
never skipped or replaced by another.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from snapdistill.errors import SnapdistillError
from snapdistill.jsonl import parse_jsonl

PROMPTS_FILE = "prompts.jsonl"
_ROW_KEYS = ("index", "prompt", "seed", "file")


def read_rows(run: Path) -> list[dict]:
    """The rows of `run/prompts.jsonl`: {"index", "prompt", "seed", "style", "file"}, in file order."""
    path = Path(run) / PROMPTS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SnapdistillError(f"{path}: cannot read ({e.strerror or e}); is {run} a `snapdistill sample` folder?") from e
    rows = []
    for n, row in parse_jsonl(path, text):
        if not isinstance(row, dict) or any(k not in row for k in _ROW_KEYS):
            raise SnapdistillError(f"{path}:{n}: a row needs {', '.join(_ROW_KEYS)}")
        rows.append(row)
    if not rows:
        raise SnapdistillError(f"{path}: no prompts")
    return rows


def image_paths(run: Path, rows: list[dict]) -> list[Path]:
    """The image of each row; an error naming the first missing one when any is absent."""
    paths = [Path(run) / row["file"] for row in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SnapdistillError(
            f"{run}: {len(paths) - len(missing)} images for {len(paths)} prompts ({missing[0]} is missing); "
            "rerun `snapdistill sample` into the same folder to fill them in"
        )
    return paths


def open_images(paths: list[Path]) -> list[Image.Image]:
    """RGB PIL images, fully read (so no file handle stays open)."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def row_key(row: dict) -> tuple:
    """What makes two runs' images comparable: the same style, prompt index and seed."""
    return (row.get("style") or "", int(row["index"]), int(row["seed"]))
