"""`merge-shards`: the folders of `build-data --shard-index K --num-shards N` array jobs -> one shard folder.

Each job writes its own `--out` (build-data refuses two jobs in one folder), and its shard numbers interleave
(`k * N + K`), so the jobs' shards never share a name. Merging copies every job's shards into one folder and
writes one manifest that lists them all, with the sizes, sha256 and sample counts the jobs recorded: the merged
folder reads, trains and verifies like a single build. Each shard is hashed as it is copied and compared with its
job's record, so a shard damaged on the way (a flipped byte on a node's disk) is named, not merged.

Jobs are checked first: the same stage (build-data) and settings but for `--shard-index`, each index once;
an index missing from 0..N-1 is named in a warning and recorded (the merged folder holds part of the input).
Duplicates are removed within a job only (`--dedup` sees one part of the input), so two jobs may hold the
same image.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from snapdistill.data.shards import REJECTS, manifest_shards
from snapdistill.errors import SnapdistillError
from snapdistill.jsonl import parse_jsonl
from snapdistill.manifest import atomic_write_text, input_entry, require_manifest, write_manifest
from snapdistill.outdir import prepare_out

# Settings that may differ between the jobs of one build: which part, where, and how fast.
JOB_KEYS = ("shard_index", "out", "workers", "device", "progress")
CHUNK = 1 << 22


def _add(a, b):
    """Counts summed: numbers added, dicts of counts summed key by key, anything else kept from `a`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _add(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k)) for k in {**a, **b}}
    return a


def copy_hashed(src: Path, dst: Path, expected_sha256: str | None, advance=lambda n: None) -> None:
    """Copy `src` to `dst` (via `dst.tmp`, renamed when whole), hashing the bytes on the way; refuse, deleting the
    copy, when they are not the bytes the job recorded."""
    tmp = dst.with_name(dst.name + ".tmp")
    h = hashlib.sha256()
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(CHUNK):
                h.update(chunk)
                fout.write(chunk)
                advance(len(chunk))
            fout.flush()
            os.fsync(fout.fileno())
        if expected_sha256 is not None and h.hexdigest() != expected_sha256:
            raise SnapdistillError(f"{src}: sha256 differs from its manifest's (same size: changed bytes); copy it "
                                   "again from where it came, or rerun that job")
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_jobs(jobs: list[Path]) -> tuple[list[dict], list[int]]:
    """(the jobs' manifests, the `--shard-index` values of the build that are not among them), refused in one line
    unless they are build-data folders of one build (the same settings but `--shard-index`, each index once); a
    missing index is a warning."""
    if len(set(Path(j).resolve() for j in jobs)) != len(jobs):
        raise SnapdistillError("a job folder is given twice; give each --shard-index job's folder once")
    manifests = []
    for job in jobs:
        m = require_manifest(job)
        if m.get("stage") != "build-data":
            raise SnapdistillError(f"{job}: a '{m.get('stage')}' folder; merge the build-data folders of the array "
                                   "jobs, then recaption or cache the merged one")
        manifests.append(m)
    first = {k: v for k, v in manifests[0]["config"].items() if k not in JOB_KEYS}
    indices: dict[int, Path] = {}
    for job, m in zip(jobs, manifests):
        config = {k: v for k, v in m["config"].items() if k not in JOB_KEYS}
        differ = sorted(k for k in set(first) | set(config) if first.get(k) != config.get(k))
        if differ:
            raise SnapdistillError(f"{job}: built with other settings than {jobs[0]} ({', '.join(differ)} differ); "
                                   "merge only the jobs of one build")
        k = m["config"].get("shard_index")
        if k in indices:
            raise SnapdistillError(f"{job}: --shard-index {k} again (also {indices[k]}); give each job once")
        indices[k] = job
    n = first.get("num_shards")
    missing = [k for k in range(n) if k not in indices] if isinstance(n, int) else []
    if missing:
        print(f"warning: jobs {', '.join(map(str, missing))} of --num-shards {n} are not given: the merged folder "
              "holds part of the input (recorded as missing_jobs)", file=sys.stderr, flush=True)
    return manifests, missing


def merge(jobs: list[Path], out: Path, *, progress: bool = True) -> Path:
    """Merge the array jobs' folders `jobs` into `out`; return the manifest path."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    jobs = [Path(j) for j in jobs]
    if not jobs:
        raise SnapdistillError("no job folders given; e.g. snapdistill merge-shards data/job-0 data/job-1 --out data/all")
    manifests, missing = check_jobs(jobs)
    listed = [manifest_shards(job, stage="merge-shards") for job in jobs]  # a missing or resized shard: one line
    owner: dict[str, Path] = {}
    for job, shards in zip(jobs, listed):
        for path in shards.paths:
            if path.name in owner:
                raise SnapdistillError(f"{path}: {owner[path.name]} has a shard of the same name; merge folders of "
                                       "one build's --shard-index jobs (their shard numbers interleave)")
            owner[path.name] = job
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SnapdistillError(f"{out}: not empty; merge into a new --out")
    prepare_out(out, {"job": jobs})
    files: dict[str, dict] = {}
    total = sum(p.stat().st_size for shards in listed for p in shards.paths)
    with Progress(TextColumn("merge-shards"), BarColumn(), DownloadColumn(), disable=not progress) as bar:
        task = bar.add_task("copy", total=total)
        for m, shards in zip(manifests, listed):
            for path in shards.paths:
                record = (m.get("files") or {}).get(path.name)
                copy_hashed(path, out / path.name, (record or {}).get("sha256"),
                            lambda n: bar.advance(task, n))
                files[path.name] = dict(record) if record else {"bytes": path.stat().st_size}
    rejects = []
    for job, m in zip(jobs, manifests):
        path = job / REJECTS
        if path.is_file():
            index = m["config"].get("shard_index")
            rejects += [json.dumps({**row, "job": index}) + "\n"
                        for _, row in parse_jsonl(path, path.read_text(encoding="utf-8"))]
    atomic_write_text(out / REJECTS, "".join(rejects))
    counts: dict = {}
    for m in manifests:
        counts = _add(counts, {k: v for k, v in (m.get("counts") or {}).items() if k != "lost"})
    given = sorted(m["config"].get("shard_index") for m in manifests)
    counts.update(per_job={str(m["config"].get("shard_index")): (m.get("counts") or {}).get("written")
                           for m in manifests},
                  missing_jobs=missing, lost=[e for shards in listed for e in shards.lost])
    first = manifests[0]
    names = sorted(files)
    return write_manifest(
        out, stage="build-data",
        config={**{k: v for k, v in first["config"].items() if k not in JOB_KEYS}, "shard_index": None,
                "merged_jobs": given},
        inputs=[input_entry(job, shard_index=m["config"].get("shard_index")) for job, m in zip(jobs, manifests)],
        outputs={"shards": names, "rejects": REJECTS, "keys": (first.get("outputs") or {}).get("keys"),
                 "merged_from": [str(j.resolve()) for j in jobs]},
        counts=counts, seed=first.get("seed"), files=files)

