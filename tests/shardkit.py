"""Test helpers for shard folders changed by hand after their stage finished."""

from __future__ import annotations

import json
from pathlib import Path

from snapdistill.inventory import folder_inventory
from snapdistill.manifest import MANIFEST, atomic_write_text, read_manifest


def relist(folder: Path) -> None:
    """Rewrite `folder`'s manifest as if its stage had written every `.tar` there now: all listed, every file's
    size and hash recorded (sample counts kept where the manifest had them)."""
    folder = Path(folder)
    body = read_manifest(folder)
    old = body.get("files") or {}
    body.setdefault("outputs", {})["shards"] = sorted(p.name for p in folder.glob("*.tar"))
    body["files"] = folder_inventory(folder)
    for name, record in body["files"].items():
        if "samples" in old.get(name, {}) and old[name]["bytes"] == record["bytes"]:
            record["samples"] = old[name]["samples"]
    atomic_write_text(folder / MANIFEST, json.dumps(body, indent=2) + "\n")
