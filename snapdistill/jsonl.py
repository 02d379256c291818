"""JSON-lines files read line by line, with errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from snapdistill.errors import SnapdistillError


def parse_jsonl(path: Path, text: str) -> list[tuple[int, Any]]:
    """(line number, value) of each non-blank line of `text` (read from `path`); `path:N: invalid JSON` on a bad one."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise SnapdistillError(f"{path}:{n}: invalid JSON ({e.msg})") from e
    return rows


def read_json_object(path: Path, what: str) -> dict | None:
    """The JSON object in `path`, or None when there is no such file; one line naming `what` when it is not one."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SnapdistillError(f"{path}: unreadable {what} ({e})") from e
    if not isinstance(data, dict):
        raise SnapdistillError(f"{path}: not a {what} (expected a JSON object)")
    return data
