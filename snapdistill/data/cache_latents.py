"""The `cache-latents` stage: shards in, the same shards out, each sample also carrying its latent and text
embedding (`latent.npy`, `txt_emb.npy`; see `snapdistill.data.latent_cache`), so training skips the VAE encode
and the text encoder.

Every shard keeps its name, its samples in their order and all their members. The image is prepared exactly as
training prepares it (`square_resize` to the training side) and encoded by the teacher's VAE in fp32. A sample
whose image or caption cannot be read is copied without the new keys and counted: training skips it, as it
would skip the unreadable image. A shard is done when it and its `stats/NAME.json` exist, so a stopped run
resumes shard by shard; the manifest, written last, holds the cache record training checks.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from snapdistill.data.images import image_tensor
from snapdistill.data.latent_cache import EMBEDDING, FORMAT, LATENT, TEXT_DTYPES, cache_identity, npy_bytes
from snapdistill.data.recaption import rewrite_shard
from snapdistill.data.shards import (
    ShardList,
    check_settings,
    decode_sample,
    manifest_shards,
    shard_records,
    write_shard_record,
)
from snapdistill.errors import SnapdistillError
from snapdistill.manifest import MANIFEST, atomic_write_text, input_entry, require_manifest, write_manifest
from snapdistill.models.encoding import TextEmbeddings, encode_latents
from snapdistill.outdir import check_out_apart, prepare_out

STATS = "stats"
RUN_CONFIG = "run.json"


@dataclass
class CacheConfig:
    """Everything `cache-latents` needs; the CLI fills it."""

    teacher: str                         # teacher name or folder whose VAE and text encoder are used
    shards: Path                         # a build-data/recaption output folder
    out: Path
    resolution: int | None = None        # training image side; None: the teacher's native size
    batch_size: int = 32                 # images per VAE call
    text_dtype: str = "fp16"             # fp16 (half the bytes) or fp32 (bit-identical training)
    device: str | None = None            # None: cuda when available, else cpu
    allow_download: bool = False
    overwrite: bool = False
    progress: bool = True

    allow_lost: bool = False             # go on without missing or cut shards' samples, recording them

    def input_shards(self) -> ShardList:
        """The shards `shards`' manifest lists, checked against the disk (once: warnings are not repeated)."""
        if getattr(self, "_listed", None) is None:
            self._listed = manifest_shards(Path(self.shards), allow_lost=self.allow_lost, stage="cache-latents")
        return self._listed

    def check(self) -> None:
        """Refuse bad settings with one line, before anything is loaded or written."""
        from snapdistill.models.loading import resolve_model

        if self.batch_size <= 0:
            raise SnapdistillError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if self.resolution is not None and self.resolution <= 0:
            raise SnapdistillError(f"--resolution must be a positive integer, got {self.resolution}")
        if self.text_dtype not in TEXT_DTYPES:
            raise SnapdistillError(f"--text-dtype must be one of {', '.join(TEXT_DTYPES)}, got '{self.text_dtype}'")
        if not Path(self.shards).is_dir():
            raise SnapdistillError(f"{self.shards}: shard folder not found; build it with `snapdistill build-data`")
        if not self.input_shards().paths:
            raise SnapdistillError(f"{self.shards}: none of its shards is there to cache")
        model = resolve_model(self.teacher, allow_download=self.allow_download)
        check_out_apart(self.out, {"--shards": self.shards, "--teacher": model.path})


class Encoder:
    """Adds the cached keys to a batch of raw samples, counting those it could not read."""

    def __init__(self, pipe, *, size: int, text_dtype: str):
        self.pipe, self.size, self.text_dtype = pipe, size, TEXT_DTYPES[text_dtype]
        self.text = TextEmbeddings(pipe.tokenizer, pipe.text_encoder)
        self.counts = {"samples": 0, "cached": 0, "unreadable": 0}

    def __call__(self, samples: list[dict]) -> list[dict]:
        readable: dict[int, tuple] = {}
        for i, sample in enumerate(samples):
            try:
                readable[i] = decode_sample(sample)
            except Exception:  # unreadable: copied without the new keys, and skipped by training
                continue
        self.counts["samples"] += len(samples)
        self.counts["unreadable"] += len(samples) - len(readable)
        self.counts["cached"] += len(readable)
        if not readable:
            return samples
        pixels = torch.stack([image_tensor(image, self.size) for image, _ in readable.values()])
        latents = encode_latents(self.pipe.vae, pixels).cpu().numpy()
        embeddings = self.text([caption for _, caption in readable.values()]).cpu().numpy()
        out = list(samples)
        for row, i in enumerate(readable):
            stale = {k: v for k, v in samples[i].items() if k not in (LATENT, EMBEDDING)}
            out[i] = {**stale, LATENT: npy_bytes(latents[row].astype(np.float32)),
                      EMBEDDING: npy_bytes(embeddings[row].astype(self.text_dtype))}
        return out


def cache_shard(src: Path, dst: Path, encoder: Encoder, batch_size: int, advance=lambda n: None,
                written: dict | None = None, *, expected: int | None = None, allow_lost: bool = False) -> dict:
    """Write the cached copy of shard `src` to `dst` (atomically); return its counts. A member whose name is
    absolute or climbs with `..` is dropped and counted as `bad_key`, as recaption does; `written` receives
    `rewrite_shard`'s record (inventory and loss)."""
    before, skipped = dict(encoder.counts), []
    record = rewrite_shard(src, dst, encoder, batch_size, skipped, advance, expected=expected, allow_lost=allow_lost)
    if written is not None:
        written.update(record)
    return {**{k: v - before[k] for k, v in encoder.counts.items()}, "bad_key": len(skipped)}


def _settings(config: CacheConfig, identity: dict) -> dict:
    """What decides the cached bytes: a resumed run must match (not the batch size, device or progress bar)."""
    body = {k: v for k, v in asdict(config).items() if k not in ("batch_size", "device", "progress", "out",
                                                                     "overwrite", "allow_download",
                                                                     "allow_lost")}
    return json.loads(json.dumps({**body, **identity}, default=str))


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("cache-latents"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled)


def _prepare(config: CacheConfig, settings: dict) -> Path:
    """Create (or clear, with --overwrite) `--out`; refuse a finished one or one begun with other settings."""
    out = Path(config.out)
    if config.overwrite and out.is_dir():
        shutil.rmtree(out)
    if (out / MANIFEST).is_file():
        raise SnapdistillError(f"{out}: holds finished cached shards; pass --overwrite or choose another --out")
    prepare_out(out, {"--shards": config.shards})
    (out / STATS).mkdir(exist_ok=True)
    check_settings(out, RUN_CONFIG, settings)
    return out


def run(config: CacheConfig, *, pipe=None) -> Path:
    """Cache latents and text embeddings of every shard of `config.shards` into `config.out`; return the
    manifest path. `pipe`: an already loaded teacher pipeline (tests)."""
    from snapdistill.dist import process_state
    from snapdistill.models.loading import (
        check_resolution,
        default_device,
        load_pipeline,
        model_fingerprint,
        native_size,
        resolve_model,
    )

    config.check()
    listed = config.input_shards()
    shards = listed.paths
    model = resolve_model(config.teacher, allow_download=config.allow_download)
    state = process_state()
    device = config.device or (str(state.device) if state.num_processes > 1 else default_device())
    if pipe is None:
        pipe = load_pipeline(model, device=device, allow_download=config.allow_download)
    check_resolution(config.resolution, unet=dict(pipe.unet.config), vae=dict(pipe.vae.config))
    size = config.resolution or native_size(pipe)
    identity = cache_identity(pipe, model_path=model.path, single_file=model.single_file, size=size)
    for part in (pipe.vae, pipe.text_encoder):
        part.requires_grad_(False).eval()
    out = Path(config.out)
    if state.is_main_process:
        _prepare(config, _settings(config, identity))
    state.wait_for_everyone()
    encoder = Encoder(pipe, size=size, text_dtype=config.text_dtype)
    mine = shards[state.process_index :: state.num_processes]
    todo = [s for s in mine if not ((out / s.name).is_file() and (out / STATS / f"{s.name}.json").is_file())]
    with _progress(config.progress and state.is_main_process) as bar:
        task = bar.add_task("samples", total=None)
        for shard in todo:
            written: dict = {}
            counts = cache_shard(shard, out / shard.name, encoder, config.batch_size,
                                 lambda n: bar.advance(task, n), written, expected=listed.expected[shard.name],
                                 allow_lost=config.allow_lost)
            write_shard_record(out / STATS, shard.name, written)
            atomic_write_text(out / STATS / f"{shard.name}.json", json.dumps(counts) + "\n")
    state.wait_for_everyone()
    if not state.is_main_process:
        return out / MANIFEST
    per_shard = {s.name: json.loads((out / STATS / f"{s.name}.json").read_text(encoding="utf-8")) for s in shards}
    totals = {k: sum(c[k] for c in per_shard.values()) for k in ("samples", "cached", "unreadable", "bad_key")}
    latent_shape = [pipe.vae.config.latent_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor]
    text_shape = [pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size]
    record = {"format": FORMAT, "teacher": config.teacher, "teacher_path": str(model.path),
              "teacher_fingerprint": model_fingerprint(model.path), **identity,
              "vae_config": dict(pipe.vae.config), "text_encoder": type(pipe.text_encoder).__name__,
              "latent_shape": latent_shape, "latent_dtype": "fp32", "text_shape": text_shape,
              "text_dtype": config.text_dtype, "keys": {"latent": LATENT, "text_embedding": EMBEDDING}}
    files, lost = shard_records(out / STATS, listed, "cache-latents")
    upstream = require_manifest(config.shards)
    keys = list(dict.fromkeys([*(upstream.get("outputs") or {}).get("keys", ["jpg", "txt", "json"]), LATENT,
                               EMBEDDING]))
    return write_manifest(out, stage="cache-latents", config={**asdict(config), "device": device, "resolution": size},
                          inputs=[input_entry(model.path, spec=config.teacher), input_entry(config.shards)],
                          outputs={"shards": [s.name for s in shards], "stats": STATS,
                                   "keys": keys, "cache": record},
                          counts={**totals, "shards": len(shards), "per_shard": per_shard, "lost": lost},
                          files=files)
