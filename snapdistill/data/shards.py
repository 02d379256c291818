"""Writing shards deterministically, and the bookkeeping that lets a stopped run resume.

A shard is written to `NAME.tar.tmp` and renamed to `NAME.tar` when complete, then a line is appended
to `progress.jsonl` with where the input stood and the running counts. On resume, shards listed there
(and still of the logged size) are kept; anything else is a half-written shard and is redone.

Tar members have a fixed mtime, owner and mode, so the bytes depend only on the samples: the same
input gives the same shards for any number of workers, and after a resume.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from snapdistill.errors import SnapdistillError
from snapdistill.inventory import sha256_file
from snapdistill.manifest import (
    MANIFEST,
    atomic_write_text,
    refuse_other_settings,
    require_manifest,
    settings_diff,
)

PROGRESS = "progress.jsonl"
REJECTS = "rejects.jsonl"
OWNER = "snapdistill"  # user and group of every member


def member_name_problem(name: str) -> str | None:
    """Why a tar member name must not be used as a sample key (it could point outside the folder it is
    unpacked into), or None when it is a plain relative name."""
    if "\0" in name:
        return "NUL in the member name"
    if "\\" in name:
        return "backslash in the member name"
    if name.startswith("/"):
        return "absolute member name"
    if ".." in name.split("/"):
        return "'..' in the member name"
    return None


def shard_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}.tar"


@functools.lru_cache(maxsize=1)
def _header_template() -> bytes:
    info = tarfile.TarInfo("x")
    info.size, info.mtime, info.mode, info.uname, info.gname = 0, 0, 0o444, OWNER, OWNER
    return info.tobuf(tarfile.USTAR_FORMAT)


def member_header(name: str, size: int) -> bytes:
    """The USTAR header tarfile writes for a member of ours (mtime 0, mode 0o444, user and group OWNER), from a
    template with the name, size and checksum filled in: tarfile's own builder costs 0.03 ms a member, about 3% of
    a reduced-decode record in build-data's main process. Names over 100 bytes or not ASCII, and sizes over
    tarfile's 11 octal digits, go through tarfile (prefix field, other encodings)."""
    if not name.isascii() or len(name) > 100 or size >= 8 ** 11:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, OWNER, OWNER
        return info.tobuf(tarfile.USTAR_FORMAT)
    t = _header_template()
    # name | mode uid gid | size | mtime | checksum (spaces while summing) | type ... prefix, padding
    header = name.encode("ascii").ljust(100, b"\0") + t[100:124] + b"%011o\0" % size + t[136:148] + b" " * 8 + t[156:]
    return header[:148] + b"%06o\0" % sum(header) + header[155:]


class ShardFile:
    """One shard being written; it appears under its real name only once closed.

    The bytes are exactly those of webdataset's `TarWriter(mtime=0, user=OWNER, group=OWNER,
    mode=0o444)` (a test checks it), written directly: TarWriter streams every member through
    tarfile's 10 KB pipe buffer, which costs 0.3 ms per 90 KB sample, about 7% of a reduced-decode
    record; direct writes of the same USTAR headers take half of that.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = open(self.tmp, "wb")
        self._hash = hashlib.sha256()  # of the bytes as they are written: no second pass over the shard
        self.count = 0
        self.sha256 = ""

    def _put(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)

    def write(self, sample: dict) -> None:
        """`sample` maps `__key__` to a str and each extension to bytes (members in sorted order)."""
        key = sample["__key__"]
        for ext in sorted(k for k in sample if not k.startswith("_")):
            data = sample[ext]
            self._put(member_header(f"{key}.{ext}", len(data)))
            self._put(data)
            self._put(b"\0" * (-len(data) % tarfile.BLOCKSIZE))
        self.count += 1

    def close(self) -> int:
        """Finish the tar (two zero blocks, padded to a record, as tarfile does), move it into place;
        return its size in bytes (`sha256` then holds its hash)."""
        self._put(b"\0" * (2 * tarfile.BLOCKSIZE))
        self._put(b"\0" * (-self._file.tell() % tarfile.RECORDSIZE))
        self.sha256 = self._hash.hexdigest()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size

    def record(self) -> dict:
        """The closed shard's inventory record: {"bytes", "sha256", "samples"}."""
        return {"bytes": self.path.stat().st_size, "sha256": self.sha256, "samples": self.count}

    def abort(self) -> None:
        """Drop the unfinished shard: close and delete its temporary file (deleted even when closing fails, as it
        does on a full disk when the close flushes)."""
        try:
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def append_line(path: Path, entry: dict) -> None:
    """Append one JSON line and make it durable before going on."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_settings(out: Path, name: str, settings: dict) -> None:
    """Refuse to continue in a folder started with other settings; else record these (in `name`)."""
    path = Path(out) / name
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        refuse_other_settings(f"{out}: holds shards", settings_diff(old, settings),
                              "use a new --out (one per --shard-index for array jobs)")
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def finished_shards(out: Path) -> list[dict]:
    """Progress entries whose shard is on disk at its logged size, up to the first that is not."""
    path = Path(out) / PROGRESS
    kept: list[dict] = []
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut short by the crash
        shard = Path(out) / entry["shard"]
        if not shard.is_file() or shard.stat().st_size != entry["bytes"]:
            break
        kept.append(entry)
    return kept


def reset_to(out: Path, kept: list[dict], prefix: str) -> None:
    """Drop everything after the last finished shard: temporary files, unlogged shards, later rejects."""
    out = Path(out)
    names = {e["shard"] for e in kept}
    pattern = re.compile(rf"^{re.escape(prefix)}-\d{{6}}\.tar(\.tmp)?$")
    for path in out.iterdir():
        if pattern.match(path.name) and path.name not in names:
            path.unlink()
    atomic_write_text(out / PROGRESS, "".join(json.dumps(e) + "\n" for e in kept))
    rejects = out / REJECTS
    keep_bytes = kept[-1]["rejects_bytes"] if kept else 0
    with open(rejects, "ab") as f:
        f.truncate(keep_bytes)


def shard_texts(path: Path) -> Iterator[tuple[dict, str]]:
    """(json, txt) of each sample of a finished shard, reading only those small members."""
    pending: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if ext in ("json", "txt"):
                pending.setdefault(key, {})[ext] = tar.extractfile(member).read().decode("utf-8")
    for parts in pending.values():
        yield json.loads(parts.get("json", "{}")), parts.get("txt", "")


class RejectLog:
    """`rejects.jsonl`: one line per skipped or repaired record (key, source, reason, action)."""

    def __init__(self, path: Path):
        self._file = open(path, "a", encoding="utf-8")

    def add(self, *, key: str, source: str, reason: str, action: str = "skipped", detail: str = "",
            index: int | None = None) -> None:
        row = {"key": key, "source": source, "reason": reason, "action": action, "index": index}
        if detail:
            row["detail"] = detail
        self._file.write(json.dumps(row) + "\n")

    def tell(self) -> int:
        """Bytes written so far (the resume point recorded with each finished shard)."""
        self._file.flush()
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


def decode_sample(sample: dict) -> tuple:
    """(RGB PIL image, caption) of a raw webdataset sample; raises when either is missing or unreadable.

    Only `jpg` and `txt` are ever decoded: webdataset's default handlers unpickle `.pyd`/`.pickle`
    members and torch.load `.pth` ones, so a shard from elsewhere could otherwise run code.
    """
    from PIL import Image

    missing = [ext for ext in ("jpg", "txt") if ext not in sample]
    if missing:
        raise ValueError(f"no {' or '.join(missing)} member")
    with io.BytesIO(sample["jpg"]) as stream:
        image = Image.open(stream)
        image.load()
        image = image.convert("RGB")
    return image, sample["txt"].decode("utf-8")


ALLOW_LOST = "--allow-lost-samples"


@dataclass
class ShardList:
    """The shards of a finished stage folder, as its manifest lists them, checked before anything is read.

    `paths`: the shards to read, in the manifest's order; `expected`: name -> samples the manifest says it holds
    (None where it does not say); `lost`: what is already known lost (missing shards, with `--allow-lost-samples`),
    the input's own record first, so later stages carry it forward."""

    folder: Path
    paths: list[Path]
    expected: dict[str, int | None]
    lost: list[dict]
    resized: list[dict] = field(default_factory=list)  # of another size than listed, read anyway: read = None

    def recorded(self) -> list[dict]:
        """What a stage that does not count per shard records (training): the losses, and the resized shards with
        the samples they should hold (what was read is counted in each epoch's warning)."""
        return self.lost + self.resized


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _expected_samples(manifest: dict, name: str) -> int | None:
    record = (manifest.get("files") or {}).get(name) or {}
    if isinstance(record.get("samples"), int):
        return record["samples"]
    per_shard = (manifest.get("counts") or {}).get("per_shard") or {}
    value = per_shard.get(name)
    if isinstance(value, dict):  # recaption and cache-latents: counts per shard
        value = value.get("samples")
    return value if isinstance(value, int) else None


def manifest_shards(folder: Path, *, allow_lost: bool = False, stage: str = "", warn=_warn) -> ShardList:
    """The shards `folder`'s manifest lists, checked against the disk before any model loads.

    A listed shard that is missing, or whose size differs from the manifest's, is one line naming it and the
    samples it should hold (SnapdistillError, exit 2); with `allow_lost` it is named in a warning instead (a
    missing one is dropped and recorded in `lost`; a cut one is read as far as it goes, and its readers count the
    samples it lacks). A `.tar` the manifest does not list is named in a warning and not read. A folder written
    before manifests recorded sizes is read from its list, with one line saying what cannot be checked.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SnapdistillError(f"{folder}: shard folder not found; build it with `snapdistill build-data`")
    manifest = require_manifest(folder)
    names = (manifest.get("outputs") or {}).get("shards")
    if names is None:
        names = sorted(p.name for p in folder.glob("*.tar"))
        if names:
            warn(f"{folder}: its manifest.json lists no shards: reading the {len(names)} .tar files there, unchecked")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SnapdistillError(f"{folder}: its manifest.json's outputs.shards is not a list of names; rebuild the "
                               "folder with the stage that wrote it")
    for name in names:
        if "/" in name or member_name_problem(name) or not name.endswith(".tar"):
            raise SnapdistillError(f"{folder}: its manifest.json lists a shard named {name!r}, not a .tar in the "
                                   "folder; rebuild the folder with the stage that wrote it")
    if not names:
        raise SnapdistillError(f"{folder}: its manifest.json lists no shards; build them with `snapdistill build-data`")
    files = manifest.get("files")
    if not isinstance(files, dict):
        warn(f"{folder}: written before manifests recorded shard sizes and hashes: a cut shard is found only by "
             "counting its samples, a changed one not at all (rerun the stage that wrote it to record them)")
        files = {}
    carried = [dict(e) for e in ((manifest.get("counts") or {}).get("lost") or []) if isinstance(e, dict)]
    expected = {name: _expected_samples(manifest, name) for name in names}
    paths, problems, lost, resized = [], [], [], []
    for name in names:
        path, record, holds = folder / name, files.get(name) or {}, expected[name]
        should = f"; it should hold {holds} samples" if holds is not None else ""
        if not path.is_file():
            problems.append(f"{path}: missing{should}")
            lost.append({"stage": stage, "folder": str(folder.resolve()), "shard": name, "expected": holds,
                         "read": 0, "reason": "missing"})
            continue
        size = path.stat().st_size
        if "bytes" in record and size != record["bytes"]:
            problems.append(f"{path}: {size} bytes, the manifest says {record['bytes']} (cut short or changed){should}")
            resized.append({"stage": stage, "folder": str(folder.resolve()), "shard": name, "expected": holds,
                            "read": None, "reason": f"{size} bytes of {record['bytes']}"})
        paths.append(path)
    if problems and not allow_lost:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SnapdistillError(f"{problems[0]}{more}; copy the shard again from where it came, or pass {ALLOW_LOST} "
                               "to go on without the samples it lacks")
    for problem in problems:
        warn(f"{problem}; going on without the samples it lacks ({ALLOW_LOST})")
    listed = set(names)
    for path in sorted(folder.glob("*.tar")):
        if path.name not in listed:
            warn(f"{path}: not listed in {folder / MANIFEST}; not read")
    return ShardList(folder, paths, expected, carried + lost, resized)


def count_problem(path: Path, expected: int | None, read: int, error: str = "") -> str | None:
    """Why a shard read in full is not what its manifest says (None when it is)."""
    if error:
        return f"{path}: unreadable after {read} of {expected if expected is not None else '?'} samples ({error})"
    if expected is not None and read != expected:
        how = "cut short or damaged" if read < expected else "changed since it was listed"
        return f"{path}: read {read} samples, the manifest lists {expected} ({how})"
    return None


def write_shard_record(stats: Path, name: str, written: dict) -> None:
    """Keep a rewritten shard's inventory record and loss (`rewrite_shard`'s result) until the manifest is written:
    `stats/NAME.file.json`, beside the stats file that marks the shard done."""
    atomic_write_text(Path(stats) / f"{name}.file.json", json.dumps(written) + "\n")


def shard_records(stats: Path, listed: ShardList, stage: str) -> tuple[dict, list[dict]]:
    """({shard name: inventory record}, lost) of a stage that rewrote `listed`'s shards shard by shard: the records
    kept by `write_shard_record`, and the losses (the input's, carried forward, then this stage's)."""
    files, lost = {}, list(listed.lost)
    for path in listed.paths:
        kept = Path(stats) / f"{path.name}.file.json"
        if not kept.is_file():  # a shard finished by a version that kept no record: hashed now, once
            done = Path(stats).parent / path.name
            kept_record = {"bytes": done.stat().st_size, "sha256": sha256_file(done)}
            written = {"file": kept_record, "lost": None}
        else:
            written = json.loads(kept.read_text(encoding="utf-8"))
        files[path.name] = written["file"]
        if written.get("lost"):
            lost.append({"stage": stage, "folder": str(listed.folder.resolve()), "shard": path.name, **written["lost"]})
    return files, lost


def shard_record(out: Path, entry: dict) -> dict:
    """The inventory record of a shard finished before a stop, from its `progress.jsonl` entry (a line written
    before entries kept the hash is hashed now, once)."""
    sha256 = entry.get("sha256")
    if not sha256:
        sha256 = sha256_file(Path(out) / entry["shard"])
    return {"bytes": entry["bytes"], "sha256": sha256, "samples": entry["count"]}
