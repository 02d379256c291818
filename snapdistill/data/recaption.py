"""The `recaption` stage: shards in, shards out, with a cleaned or model-written `txt`.

* `clean`: `captions.clean` on the original caption (no model).
* `replace`: the captioner's caption.
* `keep-better`: whichever of the cleaned original and the model caption has the higher CLIP
  similarity to the image.

Every sample keeps its other members; `txt_orig` holds the caption as it came in (the first stage's,
when recaptioning twice) and the json gains `caption_source` and any scores. A sample that cannot be
read is passed through unchanged and counted; a tar member whose name is absolute or climbs out with
`..` is dropped and listed in `rejects.jsonl` as `bad_key`. Shards are split across `accelerate launch` processes;
a shard is done when it and its `stats/NAME.json` exist, so a stopped run resumes shard by shard.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from snapdistill.data import captions
from snapdistill.data.shards import (
    ALLOW_LOST,
    REJECTS,
    ShardFile,
    ShardList,
    check_settings,
    count_problem,
    manifest_shards,
    member_name_problem,
    shard_records,
    write_shard_record,
)
from snapdistill.errors import SnapdistillError
from snapdistill.manifest import MANIFEST, atomic_write_text, input_entry, write_manifest
from snapdistill.outdir import check_out_apart, prepare_out

MODES = ("clean", "replace", "keep-better")
STATS = "stats"
RUN_CONFIG = "run.json"


@dataclass
class RecaptionConfig:
    """Everything `recaption` needs; the CLI fills it."""

    input: Path                          # a build-data (or recaption) output folder
    out: Path
    mode: str = "clean"                  # clean | replace | keep-better
    captioner: Path | None = None        # local transformers image-to-text folder
    prompt: str | None = None            # text prefix the captioner continues (BLIP: "a photography of")
    max_new_tokens: int = 40
    clip: Path | None = None             # open_clip folder or checkpoint (keep-better)
    clip_arch: str | None = None         # architecture of a --clip checkpoint file
    batch_size: int = 16
    dtype: str = "fp32"
    device: str | None = None            # None: cuda when available, else cpu

    allow_lost: bool = False             # go on without missing or cut shards' samples, recording them

    def input_shards(self) -> ShardList:
        """The shards `input`'s manifest lists, checked against the disk (once: warnings are not repeated)."""
        if getattr(self, "_shards", None) is None:
            self._shards = manifest_shards(Path(self.input), allow_lost=self.allow_lost, stage="recaption")
        return self._shards

    def check(self) -> None:
        """Refuse bad settings with one line, before anything is written or loaded."""
        from snapdistill.data.captioners import check_captioner

        if self.mode not in MODES:
            raise SnapdistillError(f"--mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.batch_size <= 0 or self.max_new_tokens <= 0:
            raise SnapdistillError("--batch-size and --max-new-tokens must be positive")
        if not Path(self.input).is_dir():
            raise SnapdistillError(f"{self.input}: input folder not found; give a build-data output folder")
        if not self.input_shards().paths:
            raise SnapdistillError(f"{self.input}: none of its shards is there to recaption")
        check_out_apart(self.out, {"--in": self.input, "--captioner": self.captioner, "--clip": self.clip})
        if self.mode != "clean":
            if self.captioner is None:
                raise SnapdistillError(f"--mode {self.mode} needs --captioner PATH (a local BLIP or other captioner)")
            check_captioner(self.captioner)
        if self.mode == "keep-better" and (self.clip is None or not Path(self.clip).exists()):
            raise SnapdistillError(f"{self.clip}: --mode keep-better needs --clip PATH (an open_clip folder or checkpoint)")


def read_samples(path: Path, rejects: list[dict] | None = None, errors: list[str] | None = None) -> Iterator[dict]:
    """Samples of a tar as {"__key__": key, ext: bytes}, in file order (webdataset's grouping).

    A member whose name is absolute, climbs with `..` or holds a backslash or NUL is skipped (it would
    be written out under the same name) and listed in `rejects` as `bad_key`. A tar that does not open or
    breaks off is one line (SnapdistillError); with `errors` given, its reason is appended there instead and
    the samples read until then are the shard's (a counted loss, `--allow-lost-samples`).
    """
    def fail(why: str, e: BaseException):
        if errors is None:
            raise SnapdistillError(f"{path}: unreadable shard ({why}); rebuild it with build-data") from e
        errors.append(why)

    current: dict | None = None
    try:
        tar = tarfile.open(path)
    except tarfile.ReadError as e:  # its message lists every compression tried, one line each
        fail("not a tar archive", e)
        return
    except OSError as e:
        fail(str(e.strerror or e), e)
        return
    try:
        with tar:
            for member in tar:
                if not member.isfile():
                    continue
                problem = member_name_problem(member.name)
                if problem:
                    if rejects is not None:
                        rejects.append({"shard": path.name, "key": member.name, "reason": "bad_key",
                                        "action": "skipped", "detail": problem})
                    continue
                key, _, ext = member.name.partition(".")
                if current is None or current["__key__"] != key or ext in current:
                    if current is not None:
                        yield current
                    current = {"__key__": key}
                current[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as e:
        fail(" ".join(str(e).split()), e)
        return  # the sample being read when it broke off is lost with the rest
    if current is not None:
        yield current


@dataclass
class Parsed:
    """The parts of a sample recaptioning needs."""

    sample: dict
    info: dict
    original: str
    image: object = None


def parse(sample: dict, need_image: bool) -> Parsed:
    """Raises (ValueError, OSError...) when the sample is unreadable."""
    from PIL import Image

    info = json.loads(sample["json"]) if "json" in sample else {}
    if not isinstance(info, dict):
        raise ValueError("json is not an object")
    original = (sample.get("txt_orig") or sample["txt"]).decode("utf-8")
    image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB") if need_image else None
    return Parsed(sample, info, original, image)


class Recaptioner:
    """Turns a batch of samples into recaptioned ones, counting what happened."""

    def __init__(self, mode: str, captioner=None, clip=None, model_name: str | None = None):
        self.mode, self.captioner, self.clip, self.model_name = mode, captioner, clip, model_name
        self.counts: dict[str, int] = {}

    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def _choose(self, parsed: list[Parsed]) -> list[tuple[str, str, dict]]:
        """(caption, caption_source, scores) per parsed sample."""
        cleaned = [captions.clean(p.original) for p in parsed]
        # A caption that cleaning empties (it was only a URL, say) is kept as it was.
        self._count("emptied_by_cleaning", sum(not c for c in cleaned))
        cleaned = [c or p.original for c, p in zip(cleaned, parsed)]
        if self.mode == "clean":
            return [(c, "cleaned", {}) for c in cleaned]
        model = [captions.clean(c) for c in self.captioner([p.image for p in parsed])]
        if self.mode == "replace":
            return [(m, "model", {}) if m else (c, "cleaned", {}) for m, c in zip(model, cleaned)]
        images = [p.image for p in parsed]
        sim_orig = self.clip(images, cleaned)
        sim_model = self.clip(images, [m or c for m, c in zip(model, cleaned)])
        out = []
        for c, m, so, sm in zip(cleaned, model, sim_orig, sim_model):
            scores = {"clip_sim_original": round(float(so), 5), "clip_sim_model": round(float(sm), 5)}
            out.append((m, "model", scores) if m and sm > so else (c, "cleaned", scores))
        return out

    def __call__(self, samples: list[dict]) -> list[dict]:
        parsed, readable = [], {}
        for i, sample in enumerate(samples):
            try:
                readable[i] = len(parsed)
                parsed.append(parse(sample, need_image=self.mode != "clean"))
            except Exception:  # unreadable: passed through unchanged, as the stage promises
                readable.pop(i)
        self._count("samples", len(samples))
        self._count("passed_through", len(samples) - len(parsed))
        choices = self._choose(parsed) if parsed else []
        out = []
        for i, sample in enumerate(samples):
            if i not in readable:
                out.append(sample)
                continue
            p = parsed[readable[i]]
            caption, source, scores = choices[readable[i]]
            self._count(f"caption_source_{source}")
            self._count("changed", caption != p.original)
            info = {**p.info, "caption_source": source, "scores": {**p.info.get("scores", {}), **scores}}
            if source == "model":
                info["caption_model"] = self.model_name
            out.append({**sample, "txt": caption.encode("utf-8"), "txt_orig": p.original.encode("utf-8"),
                        "json": json.dumps(info, ensure_ascii=False).encode("utf-8")})
        return out


def rewrite_shard(src: Path, dst: Path, transform, batch_size: int, skipped: list[dict],
                  advance=lambda n: None, *, expected: int | None = None, allow_lost: bool = False) -> dict:
    """Write shard `src`'s samples, passed through `transform(list of samples) -> samples` in batches of
    `batch_size`, to `dst` (atomically: no half-written NAME.tar.tmp is left in the folder). Members skipped for
    their names are appended to `skipped`; `advance(n)` is called after each batch.

    `expected`: the samples `src`'s manifest lists. Reading fewer (a shard cut short or broken off) is one line
    and nothing is written, unless `allow_lost`: then what was read is written and the loss is returned.
    Returns {"file": the written shard's inventory record, "lost": {"expected", "read", "reason"} or None}.
    """
    shard = ShardFile(dst)
    errors: list[str] | None = [] if allow_lost else None
    read = 0
    try:
        batch: list[dict] = []
        for sample in read_samples(src, skipped, errors):
            read += 1
            batch.append(sample)
            if len(batch) == batch_size:
                for s in transform(batch):
                    shard.write(s)
                advance(len(batch))
                batch = []
        for s in transform(batch) if batch else []:
            shard.write(s)
        advance(len(batch))
        problem = count_problem(src, expected, read, errors[0] if errors else "")
        if problem and not allow_lost:
            raise SnapdistillError(f"{problem}; copy the shard again from where it came, or pass {ALLOW_LOST} to go on "
                             "without the samples it lacks")
    except BaseException:
        shard.abort()
        raise
    shard.close()
    lost = None
    if problem:
        print(f"warning: {problem}; going on with {read} ({ALLOW_LOST})", file=sys.stderr, flush=True)
        lost = {"expected": expected, "read": read, "reason": errors[0] if errors else "cut short or damaged"}
    return {"file": shard.record(), "lost": lost}


def recaption_shard(src: Path, dst: Path, recaptioner: Recaptioner, batch_size: int,
                    rejects: list[dict] | None = None, written: dict | None = None, *, expected: int | None = None,
                    allow_lost: bool = False) -> dict:
    """Write the recaptioned copy of shard `src` to `dst`; return its counts. Members skipped for their
    names are appended to `rejects`; `written` receives `rewrite_shard`'s record (inventory and loss)."""
    before = dict(recaptioner.counts)
    skipped: list[dict] = []
    record = rewrite_shard(src, dst, recaptioner, batch_size, skipped, expected=expected, allow_lost=allow_lost)
    if written is not None:
        written.update(record)
    if rejects is not None:
        rejects.extend(skipped)
    counts = {k: v - before.get(k, 0) for k, v in recaptioner.counts.items() if v - before.get(k, 0)}
    return {**counts, "bad_key": len(skipped)} if skipped else counts


def load(config: RecaptionConfig, device: str) -> Recaptioner:
    """The models the mode needs, on `device`."""
    from snapdistill.data.captioners import Captioner, ClipSimilarity
    from snapdistill.models.loading import resolve_dtype

    captioner = clip = None
    if config.mode != "clean":
        captioner = Captioner(config.captioner, device=device, dtype=resolve_dtype(config.dtype, device),
                              prompt=config.prompt, max_new_tokens=config.max_new_tokens)
    if config.mode == "keep-better":
        clip = ClipSimilarity(config.clip, arch=config.clip_arch, device=device)
    name = Path(config.captioner).name if config.captioner else None
    return Recaptioner(config.mode, captioner, clip, name)


def _settings(config: RecaptionConfig) -> dict:
    body = asdict(config)
    # Batching and placement do not change the captions' meaning; allowing a loss changes no sample's bytes.
    for key in ("batch_size", "device", "out", "allow_lost"):
        body.pop(key)
    return json.loads(json.dumps(body, default=str))


def _totals(out: Path, shards: list[Path]) -> tuple[dict, dict]:
    per_shard = {s.name: json.loads((out / STATS / f"{s.name}.json").read_text(encoding="utf-8")) for s in shards}
    totals: dict[str, int] = {}
    for counts in per_shard.values():
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    return totals, per_shard


def run(config: RecaptionConfig, *, recaptioner: Recaptioner | None = None) -> Path:
    """Recaption every shard of `config.input` into `config.out`; return the manifest path."""
    from snapdistill.dist import process_state
    from snapdistill.models.loading import default_device

    config.check()
    listed = config.input_shards()
    shards = listed.paths
    state = process_state()
    device = config.device or (str(state.device) if state.num_processes > 1 else default_device())
    recaptioner = recaptioner or load(config, device)
    out = Path(config.out)
    if state.is_main_process:
        prepare_out(out)
        (out / STATS).mkdir(exist_ok=True)
        check_settings(out, RUN_CONFIG, _settings(config))
        (out / MANIFEST).unlink(missing_ok=True)
    state.wait_for_everyone()
    for shard in shards[state.process_index :: state.num_processes]:
        stats = out / STATS / f"{shard.name}.json"
        if (out / shard.name).is_file() and stats.is_file():
            continue  # finished before a stop
        rejects: list[dict] = []
        written: dict = {}
        counts = recaption_shard(shard, out / shard.name, recaptioner, config.batch_size, rejects, written,
                                 expected=listed.expected[shard.name], allow_lost=config.allow_lost)
        # The shard's rejects and record first: its stats file is what marks it done.
        atomic_write_text(out / STATS / f"{shard.name}.rejects.jsonl", "".join(json.dumps(r) + "\n" for r in rejects))
        write_shard_record(out / STATS, shard.name, written)
        atomic_write_text(stats, json.dumps(counts) + "\n")
    state.wait_for_everyone()
    if not state.is_main_process:
        return out / MANIFEST
    totals, per_shard = _totals(out, shards)
    per_shard_rejects = [out / STATS / f"{s.name}.rejects.jsonl" for s in shards]
    atomic_write_text(out / REJECTS, "".join(p.read_text(encoding="utf-8") for p in per_shard_rejects if p.is_file()))
    files, lost = shard_records(out / STATS, listed, "recaption")
    inputs = [input_entry(config.input)] + [input_entry(p) for p in (config.captioner, config.clip) if p]
    return write_manifest(out, stage="recaption", config={**asdict(config), "device": device}, inputs=inputs,
                          outputs={"shards": [s.name for s in shards], "stats": STATS, "rejects": REJECTS,
                                   "keys": ["jpg", "txt", "txt_orig", "json"]},
                          counts={**totals, "shards": len(shards), "per_shard": per_shard, "lost": lost},
                          files=files)
