"""A stage folder's inventory: every file it wrote, with its size and sha256, kept in its `manifest.json`.

`write_manifest` records it (the `files` key: relative path -> {"bytes", "sha256"}, a shard also with its
`samples`). Shards are hashed while they are written (`snapdistill.data.shards.ShardFile`) and passed in as
known records; every other file is hashed when the manifest is written, which is when the stage finished.
`check_folder` compares a folder with its inventory for `snapdistill verify` and for readers.

Names starting with "." are left out: they are temporary files of an atomic write, never outputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
CHUNK = 1 << 22


def sha256_file(path: Path, advance: Callable[[int], None] = lambda n: None) -> str:
    """sha256 of a file, read in 4 MiB chunks; `advance(n)` after each."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            advance(len(chunk))
    return h.hexdigest()


def listed_files(folder: Path) -> list[str]:
    """Relative POSIX paths of the files a stage wrote under `folder`, sorted: every regular file but the manifest
    and hidden (temporary) names."""
    folder = Path(folder)
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or path.is_symlink():
            continue
        if rel.as_posix() != MANIFEST:
            out.append(rel.as_posix())
    return sorted(out)


def folder_inventory(folder: Path, known: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict]:
    """{relative path: {"bytes", "sha256", ...}} of every file under `folder`; `known` records (shards hashed
    while written) are taken as they are, every other file is hashed now."""
    folder, known = Path(folder), dict(known or {})
    files = {}
    for rel in listed_files(folder):
        if rel in known:
            files[rel] = dict(known[rel])
        else:
            path = folder / rel
            files[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return files


def compare_file(path: Path, record: Mapping[str, Any], *, quick: bool = False,
                 advance: Callable[[int], None] = lambda n: None) -> tuple[str, int] | None:
    """How the file at `path` differs from its inventory `record`: ("missing", 0), ("size", its size) or
    ("sha256", its size); None when it matches (unless `quick`, its sha256 too). Hashing advances `advance`; a file
    of another size advances it by the recorded size at once."""
    if not path.is_file():
        return "missing", 0
    size = path.stat().st_size
    if size != record.get("bytes"):
        advance(int(record.get("bytes") or 0))
        return "size", size
    if not quick and sha256_file(path, advance) != record.get("sha256"):
        return "sha256", size
    return None


@dataclass
class FolderCheck:
    """What `check_folder` found: mismatches (each names its file), extra files, and what it could not check."""

    folder: Path
    stage: str
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    unchecked: str = ""


def check_folder(folder: Path, manifest: Mapping[str, Any], *, quick: bool = False,
                 advance: Callable[[int], None] = lambda n: None) -> FolderCheck:
    """Compare `folder` with the inventory in its `manifest`: each file present, of its size and (unless `quick`)
    its sha256. A manifest written before inventories is reported as unchecked."""
    folder = Path(folder)
    result = FolderCheck(folder, str(manifest.get("stage")))
    files = manifest.get("files")
    if not isinstance(files, Mapping):
        result.unchecked = "written before manifests listed their files: sizes and hashes cannot be checked"
        return result
    for rel, record in files.items():
        path = folder / rel
        if not isinstance(record, Mapping) or rel.startswith("/") or ".." in rel.split("/"):
            result.problems.append(f"{folder / MANIFEST}: its record of {rel!r} is not a file of the folder; "
                                   "rerun the stage that wrote it")
            continue
        result.files += 1
        result.bytes += int(record.get("bytes", 0))
        found = compare_file(path, record, quick=quick, advance=advance)
        if found is None:
            continue
        how, size = found
        if how == "missing":
            result.problems.append(f"{path}: missing" + (f" (holds {record['samples']} samples)"
                                                         if "samples" in record else ""))
        elif how == "size":
            result.problems.append(f"{path}: {size} bytes, the manifest says {record.get('bytes')}")
        else:
            result.problems.append(f"{path}: sha256 differs from the manifest's (same size: changed bytes)")
    result.extra = [f"{folder / rel}" for rel in listed_files(folder) if rel not in files]
    return result


def stage_folders(path: Path, also: Callable[[Path], bool] = lambda p: False) -> list[Path]:
    """The stage folders at or under `path`: `path` itself when it holds a manifest (or `also(path)` says it is
    one still under way), else every folder below that is, not descending into them (their manifest covers
    what is inside), in name order."""
    path = Path(path)
    if (path / MANIFEST).is_file() or (path.is_dir() and also(path)):
        return [path]
    if not path.is_dir():
        return []
    found = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found.extend(stage_folders(child, also))
    return found
