"""Prompt sources for `sample` (and `eval`): inline, text/json/jsonl files, COCO captions, HPSv2 styles, toy val.

Each source yields `PromptItem`s whose `index` is fixed by the source (file order), so output names
and seeds never depend on batching or on how many processes share the work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from snapdistill.errors import SnapdistillError
from snapdistill.jsonl import parse_jsonl
from snapdistill.metrics.aggregate import HPS_STYLES

# HPSv2's benchmark: one JSON list of 800 prompts per style; folder names follow HPSv2's evaluation.


@dataclass(frozen=True)
class PromptItem:
    """One prompt to render: its index within its source (and style), text and style (or None)."""

    index: int
    prompt: str
    style: str | None = None


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SnapdistillError(f"{path}: cannot read prompt file ({e.__class__.__name__}: {e})") from e


def _parse_json(path: Path, text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SnapdistillError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from e


def prompts_from_file(path: Path) -> list[str]:
    """Prompts from `.txt` (one per line), `.json` (a list of strings) or `.jsonl` (objects with `prompt`)."""
    path = Path(path)
    text = _read_text(path)
    if path.suffix == ".json":
        data = _parse_json(path, text)
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise SnapdistillError(f"{path}: expected a JSON list of prompt strings")
        prompts = data
    elif path.suffix == ".jsonl":
        prompts = []
        for n, row in parse_jsonl(path, text):
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise SnapdistillError(f'{path}:{n}: each line needs a "prompt" string')
            prompts.append(row["prompt"])
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise SnapdistillError(f"{path}: no prompts found (empty file)")
    return prompts


def coco_first_captions(path: Path, limit: int | None = None) -> list[str]:
    """The first caption of each image of a COCO `captions_*.json`, images in file order."""
    data = _parse_json(path, _read_text(path))
    if not isinstance(data, dict) or "annotations" not in data:
        raise SnapdistillError(f"{path}: not a COCO captions file (no 'annotations'); use captions_val2017.json")
    first: dict[int, str] = {}
    for ann in data["annotations"]:
        first.setdefault(ann["image_id"], ann["caption"].strip())
    # "Images in file order": the order of the `images` list when present, else of first appearance.
    order = [img["id"] for img in data.get("images", [])] or list(first)
    captions = [first[i] for i in order if i in first]
    if not captions:
        raise SnapdistillError(f"{path}: 'annotations' holds no captions")
    return captions[:limit] if limit else captions


def hps_benchmark(folder: Path, limit: int | None = None) -> list[PromptItem]:
    """HPSv2's benchmark prompts: `{style}.json` for the four styles, each a list of prompts."""
    folder = Path(folder)
    items = []
    for style in HPS_STYLES:
        path = folder / f"{style}.json"
        if not path.is_file():
            raise SnapdistillError(
                f"{path}: HPSv2 style file missing; the folder needs {', '.join(s + '.json' for s in HPS_STYLES)}"
            )
        prompts = prompts_from_file(path)
        items += [PromptItem(i, p, style) for i, p in enumerate(prompts[:limit] if limit else prompts)]
    return items


def collect_prompts(
    *,
    prompts: list[str] | None = None,
    prompts_file: Path | None = None,
    coco: Path | None = None,
    hps_dir: Path | None = None,
    toy_val: int | None = None,
    limit: int | None = None,
) -> list[PromptItem]:
    """All prompts of one `sample` run, from exactly one source kind."""
    given = [x for x in (prompts, prompts_file, coco, hps_dir, toy_val) if x]
    if len(given) != 1:
        raise SnapdistillError(
            "give exactly one prompt source: --prompt, --prompts FILE, --coco JSON, --hps-benchmark DIR or --toy-val N"
        )
    if hps_dir:
        return hps_benchmark(hps_dir, limit)
    if coco:
        texts = coco_first_captions(coco, limit)
    elif prompts_file:
        texts = prompts_from_file(prompts_file)
    elif toy_val:
        from snapdistill.toy.world import toy_val_prompts

        texts = toy_val_prompts(toy_val)
    else:
        texts = list(prompts)
    texts = texts[:limit] if limit else texts
    return [PromptItem(i, p) for i, p in enumerate(texts)]
