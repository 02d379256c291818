"""The stage contract: every stage folder ends with a `manifest.json`, written last and atomically.

Its presence means the stage finished. Downstream stages call `require_manifest` on their inputs and
record `input_entry(path)` (the path plus the sha256 of its manifest) in their own manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from snapdistill.errors import SnapdistillError
from snapdistill.inventory import MANIFEST, folder_inventory

_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
_PACKAGES = ("snapdistill", "torch", "diffusers", "transformers", "accelerate", "open_clip_torch", "webdataset")


def _umask() -> int:
    """The process's umask, read without changing it where /proc allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and a rename.

    The file gets the mode a plain `open(path, "w")` would give (0o666 less the umask), not
    mkstemp's private 0o600, so it is as readable as the shards beside it.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[str]:
    """The keys whose values differ between two flat settings dicts: `keys` in their order, else all, sorted."""
    keys = list(keys) if keys is not None else sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def refuse_other_settings(subject: str, diff: list[str], remedy: str) -> None:
    """A rerun must use the same settings: one message for every stage, raised when `diff` is not empty."""
    if diff:
        raise SnapdistillError(f"{subject} made with other settings ({', '.join(diff)} differ); {remedy}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically; see `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide a stage's numbers."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    """The commit of the snapdistill checkout, when it runs from one."""
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_manifest(
    folder: Path,
    *,
    stage: str,
    config: Mapping[str, Any],
    inputs: list[Mapping[str, Any]] | None = None,
    outputs: Mapping[str, Any] | None = None,
    counts: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    seed: int | None = None,
    files: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write `folder/manifest.json` last and atomically; return its path.

    Its `files` list every file in `folder` with size and sha256 (`snapdistill.inventory`): `files` given here
    (shards, hashed while written) are taken as they are, the rest are hashed now.
    """
    body = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": _jsonable(config),
        "inputs": _jsonable(inputs or []),
        "outputs": _jsonable(outputs or {}),
        "counts": _jsonable(counts or {}),
        "metrics": _jsonable(metrics or {}),
        "seed": seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "files": folder_inventory(Path(folder), files),
    }
    path = Path(folder) / MANIFEST
    atomic_write_text(path, json.dumps(body, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of `folder`, or None when the stage there has not finished."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise SnapdistillError(f"{path}: unreadable manifest ({e.strerror or e}); rerun the stage that wrote it") from e
    except UnicodeDecodeError as e:
        raise SnapdistillError(f"{path}: not a valid manifest (not UTF-8 text: byte {e.start}); "
                               "rerun the stage that wrote it") from e
    except json.JSONDecodeError as e:
        raise SnapdistillError(f"{path}: not a valid manifest (invalid JSON: {e}); rerun the stage that wrote it") from e
    if not isinstance(body, dict):
        raise SnapdistillError(f"{path}: not a valid manifest (a JSON {_JSON_TYPES.get(type(body), 'value')}, not an object); "
                               "rerun the stage that wrote it")
    return body


def require_manifest(folder: Path, *, stage: str | None = None) -> dict[str, Any]:
    """The manifest of an input folder; a clear error when it is missing or from another stage."""
    folder = Path(folder)
    found = read_manifest(folder)
    if found is None:
        raise SnapdistillError(
            f"{folder}: no {MANIFEST}; the stage that writes it did not finish (rerun it)"
        )
    if stage is not None and found.get("stage") != stage:
        raise SnapdistillError(f"{folder}: expected a '{stage}' output, found stage '{found.get('stage')}'")
    return found


def manifest_sha256(folder: Path) -> str:
    """sha256 of `folder/manifest.json`, the identity of an input."""
    return hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()


def input_entry(folder: Path, **extra: Any) -> dict[str, Any]:
    """How a stage records one input: its path and, when it has one, its manifest's sha256."""
    folder = Path(folder)
    entry: dict[str, Any] = {"path": str(folder.resolve())}
    if (folder / MANIFEST).is_file():
        entry["manifest_sha256"] = manifest_sha256(folder)
    entry.update(extra)
    return entry
