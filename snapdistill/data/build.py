"""The `build-data` stage: raw image–text sources -> filtered, resized WebDataset shards + manifest.

The input is one deterministic stream (sources mixed by `sources/mix.py`, cut by `--limit`, and split
by `--shard-index/--num-shards`, record i going to job i mod N). Workers decode and re-encode fixed
chunks of it; the main process applies the stateful filters in stream order and writes the shards.
So the shards are byte-identical for any `--workers`, and a resumed run ends where an unbroken one does.

Each sample is `KEY.jpg` (resolution x resolution, JPEG q95), `KEY.txt` (the caption) and `KEY.json`:
`source`, `key`, `caption_orig`, `original_width`/`original_height`, `width`/`height` (also the original
size: diffusers' LCM distillation scripts filter on these), `pwatermark` when the source has one,
`pixel_sha256`, `group` (only for records one source row fans out, e.g. COCO's captions=all: they are not
duplicates of each other), `scores` and `meta` (the source's own metadata). KEY is the record's index in
the stream.
"""

from __future__ import annotations

import io
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from snapdistill import outdir
from snapdistill.data.filters import Deduper, FilterConfig, hps_reason, normalize_caption
from snapdistill.data.shards import (
    PROGRESS,
    REJECTS,
    RejectLog,
    ShardFile,
    append_line,
    check_settings,
    finished_shards,
    reset_to,
    shard_name,
    shard_record,
    shard_texts,
)
from snapdistill.data.sources import Opened, SourceSpec, open_source, source_labels
from snapdistill.data.sources.mix import mix
from snapdistill.data.worker import Outcome, ProcessConfig, ordered_map, process_chunk, worker_pool
from snapdistill.errors import SnapdistillError
from snapdistill.manifest import MANIFEST, input_entry, write_manifest

CHUNK = 32  # records per unit of work, and the HPS batch: fixed, because resume replays whole chunks
RUN_CONFIG = "run.json"


@dataclass
class BuildConfig:
    """Everything `build-data` needs; the CLI fills it."""

    sources: list[SourceSpec]
    out: Path
    resolution: int = 512                 # output side: short side resized to it, then centre-cropped
    shard_size: int = 1000                # samples per shard
    prefix: str = "shard"                 # shards are {prefix}-%06d.tar
    workers: int = 1                      # processes; the output does not depend on it
    shard_index: int = 0                  # this job's part of the input ...
    num_shards: int = 1                   # ... out of this many (array jobs)
    limit: int | None = None              # stop after this many input records (before the split)
    seed: int = 0                         # decides how weighted sources interleave
    quality: int = 95                     # JPEG quality
    reduced_decode: bool = True           # decode large JPEGs at 1/2, 1/4, 1/8 scale
    filters: FilterConfig = field(default_factory=FilterConfig)
    hps_threshold: float | None = None    # drop samples with HPSv2 score below this
    hps_checkpoint: Path | None = None    # HPS v2.0/v2.1 weights (open_clip ViT-H-14 fine-tune)
    hps_version: str | None = None        # "v2.0" or "v2.1": their scores are not comparable
    device: str | None = None             # for the HPS scorer [default: cuda if available]
    progress: bool = True                 # show the rich progress bar

    def check(self, *, scorer=None) -> None:
        """Refuse impossible settings with one line, before anything is opened or written."""
        positive = {"--resolution": self.resolution, "--shard-size": self.shard_size, "--workers": self.workers,
                    "--num-shards": self.num_shards}
        for flag, value in positive.items():
            if value <= 0:
                raise SnapdistillError(f"{flag} must be a positive integer, got {value}")
        if self.limit is not None and self.limit <= 0:
            raise SnapdistillError(f"--limit must be positive, got {self.limit}")
        if not 0 <= self.shard_index < self.num_shards:
            raise SnapdistillError(f"--shard-index must be in 0..{self.num_shards - 1}, got {self.shard_index}")
        if not 1 <= self.quality <= 100:
            raise SnapdistillError(f"JPEG quality must be in 1..100, got {self.quality}")
        if not self.prefix or "/" in self.prefix:
            raise SnapdistillError(f"--prefix must be a plain file-name prefix, got '{self.prefix}'")
        if not self.sources:
            raise SnapdistillError("no --source given; e.g. --source coco:annotations/captions_train2017.json")
        f = self.filters
        if f.max_pixels is not None and f.max_pixels <= 0:
            raise SnapdistillError(f"--max-pixels must be a positive integer, got {f.max_pixels}")
        if f.min_aspect is not None and f.max_aspect is not None and f.min_aspect > f.max_aspect:
            raise SnapdistillError(f"--min-aspect {f.min_aspect} is above --max-aspect {f.max_aspect}")
        if self.hps_threshold is not None and scorer is None:
            from snapdistill.metrics.hps import HPS_VERSIONS

            if self.hps_version not in HPS_VERSIONS:
                raise SnapdistillError(f"--hps-threshold needs --hps-version v2.0 or v2.1 (their scores differ), "
                                       f"got {self.hps_version}")
            if self.hps_checkpoint is None or not Path(self.hps_checkpoint).is_file():
                raise SnapdistillError(f"{self.hps_checkpoint}: HPS checkpoint not found; pass --hps-checkpoint "
                                       "HPS_v2.1_compressed.pt (or HPS_v2_compressed.pt)")


class Tally:
    """Counts per source, per reason and per shard, for the progress bar and the manifest."""

    def __init__(self, labels: list[str], snapshot: dict | None = None):
        zero = {"seen": 0, "written": 0, "rejected": 0}
        self.data = snapshot or {"seen": 0, "written": 0, "rejected": {}, "repaired": {},
                                 "per_source": {label: dict(zero) for label in labels}}
        per_source = self.data["per_source"]
        if list(per_source) != labels:  # a run started when labels were KIND:PATH: same sources, in order
            counts = list(per_source.values()) if len(per_source) == len(labels) else []
            self.data["per_source"] = {label: counts[i] if counts else dict(zero) for i, label in enumerate(labels)}

    def seen(self, label: str) -> None:
        self.data["seen"] += 1
        self.data["per_source"][label]["seen"] += 1

    def written(self, label: str) -> None:
        self.data["written"] += 1
        self.data["per_source"][label]["written"] += 1

    def rejected(self, label: str, reason: str) -> None:
        self.data["rejected"][reason] = self.data["rejected"].get(reason, 0) + 1
        self.data["per_source"][label]["rejected"] += 1

    def repaired(self, reason: str) -> None:
        self.data["repaired"][reason] = self.data["repaired"].get(reason, 0) + 1

    def summary(self) -> str:
        """Rejects by reason, most frequent first."""
        items = sorted(self.data["rejected"].items(), key=lambda kv: -kv[1])
        return " ".join(f"{k}={v}" for k, v in items) or "no rejects"


def settings(config: BuildConfig) -> dict:
    """The settings that decide the shard bytes (not workers, device or the progress bar)."""
    body = asdict(config)
    for key in ("workers", "device", "progress", "out"):
        body.pop(key)
    return json.loads(json.dumps(body, default=str))


def entries(config: BuildConfig, opened: list[Opened]) -> Iterator[tuple[int, int, str, object]]:
    """This job's records as (position in this job, index in the whole stream, source label, record)."""
    streams = [(spec, o.records) for spec, o in zip(config.sources, opened)]
    whole = enumerate(mix(streams, seed=config.seed))
    mine = itertools.islice(itertools.islice(whole, config.limit), config.shard_index, None, config.num_shards)
    labels = source_labels(config.sources)
    for pos, (index, (src, rec)) in enumerate(mine):
        yield pos, index, labels[src], rec


def chunks(items: Iterator, start: int) -> Iterator[list]:
    """`items` from position `start` on, in lists of CHUNK."""
    items = itertools.islice(items, start, None)
    while batch := list(itertools.islice(items, CHUNK)):
        yield batch


class _Run:
    """The main-process side of a build: stateful filters, HPS, rejects, shards and progress lines."""

    def __init__(self, config: BuildConfig, scorer, tally: Tally, dedupe: Deduper, done: list[dict]):
        self.config, self.scorer, self.tally, self.dedupe = config, scorer, tally, dedupe
        self.out = Path(config.out)
        self.next_input = done[-1]["next_input"] if done else 0
        self.shards = [(e["shard"], e["count"]) for e in done]
        self.files = {e["shard"]: shard_record(self.out, e) for e in done}  # each shard's inventory record
        self.rejects = RejectLog(self.out / REJECTS)
        self.shard: ShardFile | None = None
        self.fresh = 0  # records handled in this process (for the rate)

    def _hps_scores(self, chunk: list, outcomes: list[Outcome]) -> dict[int, float]:
        """HPSv2 scores of a chunk's decoded images, one batch per chunk (a fixed batch composition)."""
        if self.scorer is None:
            return {}
        from PIL import Image

        todo = [j for j, o in enumerate(outcomes) if o.jpg is not None]
        if not todo:
            return {}
        images = [Image.open(io.BytesIO(outcomes[j].jpg)).convert("RGB") for j in todo]
        prompts = [normalize_caption(chunk[j][3].caption) for j in todo]
        scores = self.scorer.score(images, prompts)
        return {j: round(float(s), 4) for j, s in zip(todo, scores)}

    def handle(self, chunk: list, outcomes: list[Outcome]) -> None:
        scores = self._hps_scores(chunk, outcomes)
        for j, ((pos, index, label, rec), out) in enumerate(zip(chunk, outcomes)):
            if pos < self.next_input:
                continue  # already counted before a resume: this chunk is replayed only for its HPS batch
            self.fresh += 1
            self.tally.seen(label)
            caption = normalize_caption(rec.caption)
            reason = out.reason or hps_reason(scores.get(j, 0.0), self.config.hps_threshold) \
                or self.dedupe.check(out.sha256, caption, rec.group)
            if reason:
                self.tally.rejected(label, reason)
                self.rejects.add(key=rec.key, source=rec.source, reason=reason, detail=out.detail, index=index)
                continue
            if out.repair:
                self.tally.repaired(out.repair)
                self.rejects.add(key=rec.key, source=rec.source, reason=out.repair, action="repaired", index=index)
            self.dedupe.add(out.sha256, caption, rec.group)
            self.tally.written(label)
            self._write(self._sample(index, rec, out, caption, scores.get(j)), pos + 1)

    def _sample(self, index: int, rec, out: Outcome, caption: str, hps: float | None) -> dict:
        info = {"source": rec.source, "key": rec.key, "caption_orig": rec.caption,
                "original_width": out.width, "original_height": out.height,
                "width": out.width, "height": out.height}
        if rec.meta.get("pwatermark") is not None:
            info["pwatermark"] = rec.meta["pwatermark"]
        info["pixel_sha256"] = out.sha256
        if rec.group is not None:
            info["group"] = rec.group  # restored with the duplicate filter on resume
        info["scores"] = {f"hps_{self.config.hps_version}": hps} if hps is not None else {}
        info["meta"] = rec.meta
        body = json.dumps(info, ensure_ascii=False).encode("utf-8")
        return {"__key__": f"{index:09d}", "jpg": out.jpg, "txt": caption.encode("utf-8"), "json": body}

    def _write(self, sample: dict, next_input: int) -> None:
        if self.shard is None:
            number = len(self.shards) * self.config.num_shards + self.config.shard_index
            self.shard = ShardFile(self.out / shard_name(self.config.prefix, number))
        self.shard.write(sample)
        if self.shard.count == self.config.shard_size:
            self.close_shard(next_input)

    def close_shard(self, next_input: int) -> None:
        """Finish the open shard (if any) and log how far the input got."""
        if self.shard is None:
            return
        size = self.shard.close()
        name, count = self.shard.path.name, self.shard.count
        self.shards.append((name, count))
        self.files[name] = self.shard.record()
        sha256, self.shard = self.shard.sha256, None
        append_line(self.out / PROGRESS, {"shard": name, "count": count, "bytes": size, "sha256": sha256,
                                          "next_input": next_input,
                                          "rejects_bytes": self.rejects.tell(), "tally": self.tally.data})


def prepare_out(out: Path, config: BuildConfig, opened: list[Opened]) -> list[dict]:
    """Create `out` apart from the sources' files, refuse a folder holding other settings; return the shards kept
    from a stopped run."""
    outdir.prepare_out(out, {f"--source {s.label}": o.out_apart() for s, o in zip(config.sources, opened)})
    check_settings(out, RUN_CONFIG, settings(config))
    (out / MANIFEST).unlink(missing_ok=True)  # the folder is no longer a finished build
    done = finished_shards(out)
    reset_to(out, done, config.prefix)
    return done


def restore(out: Path, done: list[dict], config: BuildConfig) -> tuple[Tally, Deduper]:
    """Counts and duplicate state as they were after the last finished shard."""
    tally = Tally(source_labels(config.sources), json.loads(json.dumps(done[-1]["tally"])) if done else None)
    dedupe = Deduper(config.filters)
    for entry in done:
        for info, txt in shard_texts(out / entry["shard"]):
            dedupe.add(info.get("pixel_sha256", ""), txt, info.get("group"))
    return tally, dedupe


def load_scorer(config: BuildConfig):
    """The HPS scorer `eval` uses (open_clip ViT-H-14 + the HPS checkpoint), loaded only when asked for."""
    try:
        from snapdistill.metrics.hps import load_hps_scorer
    except ImportError as e:
        raise SnapdistillError(f"--hps-threshold needs snapdistill.metrics.hps, which failed to import ({e})") from e
    from snapdistill.models.loading import default_device

    device = config.device or default_device()
    return load_hps_scorer(Path(config.hps_checkpoint), config.hps_version, device=device)


def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("build-data"), BarColumn(), TextColumn("{task.completed} records"),
               TextColumn("{task.fields[rate]:.0f} rec/s"), TextColumn("written {task.fields[written]}"),
               TextColumn("{task.fields[rejects]}"), TimeElapsedColumn())
    return Progress(*columns, disable=not enabled)


def _process(run: _Run, config: BuildConfig, opened: list[Opened], pool) -> None:
    """Feed the stream through the workers into `run`, updating the progress bar per chunk."""
    pcfg = ProcessConfig(config.resolution, config.quality, config.reduced_decode, config.filters)
    # HPS scores come in batches of one chunk: replay the whole chunk so its batch is the same as in an
    # unbroken run (scores can differ in the last bits with the batch). Without HPS, start where it stopped.
    start = run.next_input - run.next_input % CHUNK if run.scorer is not None else run.next_input
    started = time.perf_counter()
    with _progress(config.progress) as bar:
        results = ordered_map(process_chunk, chunks(entries(config, opened), start), pool, config.workers, (pcfg,))
        task = bar.add_task("build", total=None, rate=0.0, written=0, rejects="")
        try:
            for chunk, outcomes in results:
                run.handle(chunk, outcomes)
                rate = run.fresh / max(time.perf_counter() - started, 1e-9)
                bar.update(task, completed=run.tally.data["seen"], rate=rate, written=run.tally.data["written"],
                           rejects=run.tally.summary())
            run.close_shard(run.next_input + run.fresh)
        except BaseException:  # a full disk or an interrupt: no half-written shard left taking space
            if run.shard is not None:
                run.shard.abort()
            raise
    run.rejects.close()


def run(config: BuildConfig, *, scorer=None) -> Path:
    """Build the shards of `config` into `config.out`; return the manifest path.

    `scorer` (anything with `score(images, prompts)`) replaces the HPS scorer loaded from
    `--hps-checkpoint`; the filter itself is the same.
    """
    config.check(scorer=scorer)
    opened = [open_source(spec) for spec in config.sources]
    # Workers start before the scorer loads or the progress bar runs: no threads yet, so fork is safe.
    with worker_pool(config.workers) as pool:
        if config.hps_threshold is not None and scorer is None:
            scorer = load_scorer(config)
        out = Path(config.out)
        done = prepare_out(out, config, opened)
        tally, dedupe = restore(out, done, config)
        work = _Run(config, scorer if config.hps_threshold is not None else None, tally, dedupe, done)
        started = time.perf_counter()
        _process(work, config, opened, pool)
        elapsed = time.perf_counter() - started
    names = [name for name, _ in work.shards]
    labels = source_labels(config.sources)
    inputs = [input_entry(p, source=label) for label, o in zip(labels, opened) for p in o.inputs]
    return write_manifest(
        out,
        stage="build-data",
        config={**asdict(config), "sources_info": dict(zip(labels, (o.info for o in opened)))},
        inputs=inputs,
        outputs={"shards": names, "rejects": REJECTS, "progress": PROGRESS, "keys": ["jpg", "txt", "json"]},
        counts={**tally.data, "shards": len(names), "per_shard": dict(work.shards)},
        files=work.files,
        metrics={"records_per_s_this_run": work.fresh / elapsed if elapsed > 0 else None, "elapsed_s": elapsed},
        seed=config.seed,
    )
