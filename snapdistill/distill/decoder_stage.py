"""`distill-decoder`: a small VAE decoder learns the teacher decoder's output on the teacher's latents.

The latents are the teacher encoder's (frozen) on the shards' images (read from the shards instead where
`cache-latents` wrote them for this teacher's VAE), or (`latents_from="sample"`) those a
sampler lands on for the shards' captions, drawn once into the run folder before training, or (`"mix"`) each
batch half of either: the decoder then meets both the distribution it decodes in use and the encoder's. The target is
the teacher decoder's output on the same latents. Training runs on the shared loop (AdamW, warm-up, EMA,
resume, checkpoints, stats.jsonl); `val/step-N.png` shows the teacher decoder's row above the student's.

Run folder: config.json, checkpoints/, stats.jsonl, val/, `decoder/` (a stock diffusers VAE folder plus
`decoder.json`, the teacher latent space it decodes), `student/` with `--into`, manifest.json last.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from snapdistill.data.latent_cache import cache_identity, cache_record, check_cache
from snapdistill.distill.checkpoint_files import recorded_files
from snapdistill.distill.data import ShardPairs, find_shards
from snapdistill.distill.decoder_loss import DecoderLoss, psnr_db
from snapdistill.distill.loop import TrainConfig, ema_weights_into, train
from snapdistill.distill.run import prepare_run, resume_point, save_grid_rows
from snapdistill.distill.stage import resolved_config
from snapdistill.errors import SnapdistillError
from snapdistill.manifest import atomic_write_text, input_entry, write_manifest
from snapdistill.models import decoder as records
from snapdistill.models import small_decoder as sd
from snapdistill.models.encoding import encode_latents
from snapdistill.models.loading import load_pipeline, native_size, resolve_model
from snapdistill.models.student_record import StudentRecord
from snapdistill.outdir import check_out_apart

LATENT_SOURCES = ("images", "sample", "mix")
SAMPLED = "sampled-latents.safetensors"
DEFAULT_LR = 4e-3


@dataclass
class DecoderConfig:
    teacher: str                               # teacher name or pipeline folder: its VAE is the target
    shards: Path                               # images (and captions for --latents-from sample)
    out: Path
    train: TrainConfig = field(default_factory=TrainConfig)
    # kl at width 0.5 (SnapFusion's decoder) is the default for its fidelity: on the toy world, at 2,000 steps on mixed
    # latents, 35.7 dB against the teacher's decoder, tiny's 31.3. tiny is the faster (12x against 3.2x on the SD 1.5
    # layout at 512 px) and, at 4,000 steps, the bench's (README, "What the bench shows").
    arch: str = "kl"                           # kl (teacher layout × width) | tiny (AutoencoderTiny)
    width: float = 0.5                         # channel multiplier, in (0, 1]
    loss: str = "l2"                           # pixel loss: l2 | l1
    perceptual: str | None = None              # feature network: "toy" (the toy judge) or a judge-format folder
    perceptual_weight: float = 1.0
    encoder_weight: float = 1.0                # the small VAE's own encoder learns the teacher's latents
    latents_from: str = "mix"                  # images | sample | mix (half of each batch from either)
    sampler: str | None = None                 # the model sampled for latents (default: the teacher)
    sample_count: int = 1024                   # latents drawn once with --latents-from sample or mix
    sample_steps: int | None = None            # its steps (default: a student's own, else 16)
    guidance: float = 7.5
    into: Path | None = None                   # a student folder: OUT/student is it with the small vae
    val_images: int = 8
    eval_images: int = 256                     # PSNR against the teacher decoder in the manifest
    device: str | None = None
    allow_download: bool = False
    resume: str | None = None
    overwrite: bool = False
    allow_lost: bool = False                 # train without missing or cut shards' samples, recording them

    def check(self) -> None:
        """Refuse impossible settings with one line, before the teacher loads or anything is written."""
        sd.check_arch(self.arch)
        sd.check_width(self.width)
        if self.loss not in DecoderLoss.PIXEL:
            raise SnapdistillError(f"unknown --loss '{self.loss}'; choose one of {', '.join(DecoderLoss.PIXEL)}")
        if self.latents_from not in LATENT_SOURCES:
            raise SnapdistillError(f"unknown --latents-from '{self.latents_from}'; choose one of "
                                   f"{', '.join(LATENT_SOURCES)}")
        if not (self.perceptual_weight >= 0 and self.encoder_weight >= 0):
            raise SnapdistillError("--perceptual-weight and --encoder-weight must be >= 0")
        for flag, value in (("--sample-count", self.sample_count), ("--val-images", self.val_images),
                            ("--eval-images", self.eval_images), ("--sample-steps", self.sample_steps or 1)):
            if value < 1:
                raise SnapdistillError(f"{flag} must be a positive integer, got {value}")
        if self.perceptual not in (None, "toy") and not Path(self.perceptual).is_dir():
            raise SnapdistillError(f"--perceptual {self.perceptual}: not 'toy' nor a folder with config.json and "
                                   "judge.safetensors (the toy judge's format)")
        if self.into is not None:
            check_student(self.into)
        self.train.check()


def check_student(folder: Path) -> StudentRecord:
    """Refuse an `--into` that is not a distilled student folder."""
    folder = Path(folder)
    record = StudentRecord.read(folder) if folder.is_dir() else None
    if record is None or not (folder / "model_index.json").is_file():
        raise SnapdistillError(f"--into {folder}: not a student folder (no snapdistill.json and model_index.json); "
                               "pass a distill-guidance or distill-steps OUT/student")
    return record


def load_features(spec: str | None):
    """The perceptual feature network (frozen), or None."""
    if spec is None:
        return None
    from snapdistill.toy.judge import load_judge_from
    from snapdistill.toy.paths import load_judge

    try:
        judge = load_judge() if spec == "toy" else load_judge_from(Path(spec))
    except (OSError, ValueError, KeyError) as e:
        raise SnapdistillError(f"--perceptual {spec}: not a feature network in the toy judge's format ({e})") from e
    judge.requires_grad_(False)
    return judge.features


def sampled_latents(config: DecoderConfig, pipe, captions: list[str], path: Path) -> torch.Tensor:
    """Diffusion-space latents a sampler lands on for `captions` (seed i for caption i), cached at `path`."""
    from safetensors.torch import load_file, save_file

    from snapdistill.sampling import render
    from snapdistill.sampling.config import SampleConfig

    if path.is_file():
        return load_file(str(path))["latents"]
    model = resolve_model(config.sampler or config.teacher, allow_download=config.allow_download)
    sampler = load_pipeline(model, device=str(pipe.device))
    settings, sampler.scheduler = render.resolve_settings(
        SampleConfig(model=str(model.path), out=Path("."), steps=config.sample_steps or (None if
                     StudentRecord.read(model.path) else 16), guidance=config.guidance), sampler, model.path)
    out = []
    for lo in range(0, len(captions), 64):
        chunk = captions[lo : lo + 64]
        gens = [torch.Generator("cpu").manual_seed(lo + i) for i in range(len(chunk))]
        with torch.no_grad():
            out.append(sampler(prompt=chunk, num_inference_steps=settings["steps"], guidance_scale=config.guidance,
                               generator=gens, output_type="latent").images.cpu())
    latents = torch.cat(out)
    save_file({"latents": latents.contiguous()}, str(path))
    return latents


def split_batch(latents_from: str, batch_size: int) -> tuple[int, int]:
    """(sampled, encoded): how many latents of each batch come from the sampled pool and from the shards' images."""
    sampled = {"images": 0, "sample": batch_size, "mix": batch_size // 2}[latents_from]
    return sampled, batch_size - sampled


def latent_batches(latents: torch.Tensor, batch_size: int, seed: int, skip: int):
    """Endless batches over a fixed latent pool, each epoch's order a pure function of (seed, epoch)."""
    epoch, seen = 0, 0
    while True:
        order = list(range(len(latents)))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        for lo in range(0, len(order) - batch_size + 1, batch_size):
            seen += batch_size
            if seen > skip:
                yield latents[order[lo : lo + batch_size]]
        epoch += 1


def first_images(shards: list[str], n: int, size: int) -> torch.Tensor:
    """The first `n` images of the shards in [-1, 1] (fixed validation and evaluation images)."""
    pairs = ShardPairs(shards, size=size, seed=0)
    got = []
    for pixels, _ in pairs.batches(1):
        got.append(pixels)
        if len(got) == n:
            break
    return torch.cat(got)


def shard_captions(shards: list[str], n: int) -> list[str]:
    from snapdistill.distill.run import first_captions

    return first_captions(shards, n)


@torch.no_grad()
def decode_psnr(small, teacher_vae, latents: torch.Tensor, batch: int = 64) -> float:
    """Mean PSNR (dB) of the small decoder against the teacher decoder on diffusion-space latents."""
    values = [psnr_db(sd.to_pixels(small, z), sd.to_pixels(teacher_vae, z))
              for z in latents.split(batch)]
    return float(torch.cat(values).mean())


def save_decoder(vae, folder: Path, *, teacher_vae, arch: str, width: float, teacher: str) -> Path:
    """Write the small VAE (a stock diffusers folder) and its record, atomically."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    records.drop_derived_keys(tmp / "config.json")
    space = records.latent_space(teacher_vae.config)
    records.write_record(tmp, arch=arch, width=width, teacher=teacher, latent_channels=space.channels,
                         teacher_scaling_factor=space.scaling_factor, downsample=space.downsample)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def write_student(student: Path, decoder: Path, folder: Path) -> Path:
    """`folder`: a copy of the student folder whose `vae/` is the small decoder, loading in stock diffusers."""
    import json

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(student, tmp, ignore=shutil.ignore_patterns("vae", "manifest.json"))
    shutil.copytree(decoder, tmp / "vae")
    index = json.loads((tmp / "model_index.json").read_text())
    index["vae"] = ["diffusers", json.loads((decoder / "config.json").read_text())["_class_name"]]
    atomic_write_text(tmp / "model_index.json", json.dumps(index, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def run(config: DecoderConfig) -> Path:
    """Train the small decoder, save `decoder/` (and `student/` with --into), write the manifest."""
    config.check()
    teacher_model = resolve_model(config.teacher, allow_download=config.allow_download)
    inputs = {"--teacher": teacher_model.path, "--shards": config.shards, "--into": config.into,
              "--perceptual": None if config.perceptual in (None, "toy") else config.perceptual,
              "--sampler": config.sampler and resolve_model(config.sampler).path}
    check_out_apart(config.out, inputs)
    listed = find_shards(config.shards, allow_lost=config.allow_lost, stage="distill-decoder")
    shards = [str(p) for p in listed.paths]
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(teacher_model, device=device, allow_download=config.allow_download)
    teacher_vae = pipe.vae.requires_grad_(False).eval()
    sd.check_fits(config.arch, teacher_vae.config, config.width)
    space = records.pipeline_latent_space(pipe, teacher_model.path / "vae")
    if config.into is not None:
        into_space = records.latent_space(records_config(config.into), records.read_record(config.into / "vae"))
        if differ := space.differs(into_space):
            raise SnapdistillError(f"--into {config.into}: its VAE decodes another latent space ({'; '.join(differ)})")
    if config.train.lr is None:
        # A from-scratch conv net: on the toy world (kl, width 0.5, L2, 600 steps) 4e-3 beat 1e-3/2e-3 and tied 8e-3;
        # recorded in config.json and the manifest.
        config.train.lr = DEFAULT_LR
    size = native_size(pipe)
    sampled, encoded = split_batch(config.latents_from, config.train.batch_size)
    cached = cache_record(config.shards) if encoded else None
    if cached is not None:  # before the run folder is made: a cache of another VAE or size is refused
        identity = cache_identity(pipe, model_path=teacher_model.path, single_file=teacher_model.single_file,
                                  size=size)
        check_cache(cached, identity, shards=config.shards, teacher=config.teacher, text=False)
    out = Path(config.out)
    prepare_run(out, resolved_config(config), resume=config.resume, overwrite=config.overwrite)
    resume_from = resume_point(out, config.resume)

    val_x = first_images(shards, max(config.val_images, config.eval_images), size).to(device)
    val_z = encode_latents(teacher_vae, val_x)
    small = sd.build_small(config.arch, teacher_vae.config, config.width, seed=config.train.seed).to(device)
    loss = DecoderLoss(pixel=config.loss, features=load_features(config.perceptual),
                          perceptual=config.perceptual_weight if config.perceptual else 0.0,
                          encoder_weight=config.encoder_weight)

    pool = (sampled_latents(config, pipe, shard_captions(shards, config.sample_count), out / SAMPLED)
            if sampled else None)
    # From cached shards the stream gives (latents, text embeddings) in the same order as (pixels, captions).
    pairs = (ShardPairs(listed, size=size, seed=config.train.seed, cached=cached, allow_lost=config.allow_lost)
             if encoded else None)

    def batches(skip: int):
        # `skip` counts samples; each optimisation step took `sampled` of the pool and `encoded` of the shards.
        done = skip // config.train.batch_size
        parts = [latent_batches(pool, sampled, config.train.seed, done * sampled) if sampled else None,
                 (pixels for pixels, _ in pairs.batches(encoded, skip=done * encoded)) if encoded else None]
        while True:
            yield tuple(next(part) if part is not None else None for part in parts)

    def step_loss(module, raw, gen):
        with torch.no_grad():
            parts = []  # (latents, the teacher decoder's output on them, encoder input, its teacher latents)
            if raw[0] is not None:  # sampled latents: the encoder reads the teacher's decoding of them
                z = raw[0].to(device)
                target = sd.to_pixels(teacher_vae, z)
                images = target.clamp(-1, 1)
                parts.append((z, target, images, encode_latents(teacher_vae, images)))
            if raw[1] is not None and cached is not None:
                # cached latents: no image is read, so the small encoder reads the teacher's decoding and learns to
                # give the latents back. Sampled latents (above) take the teacher encoder's latents of that decoding
                # instead; here that pass would undo what the cache saves.
                z = raw[1].to(device)
                target = sd.to_pixels(teacher_vae, z)
                parts.append((z, target, target.clamp(-1, 1), z))
            elif raw[1] is not None:  # shard images: the teacher encoder's latents
                images = raw[1].to(device)
                z = encode_latents(teacher_vae, images)
                parts.append((z, sd.to_pixels(teacher_vae, z), images, z))
            latents, target, images, image_latents = (torch.cat(column) for column in zip(*parts))
        return loss(module, latents=latents, target=target, images=images, image_latents=image_latents)

    def validate(step: int) -> None:
        was = small.training
        with torch.no_grad():
            z = val_z[: config.val_images]
            rows = [(sd.to_pixels(m, z).clamp(-1, 1) + 1) / 2 for m in (teacher_vae, small.eval())]
        save_grid_rows([r.permute(0, 2, 3, 1).cpu().numpy() for r in rows], out / "val" / f"step-{step:07d}.png")
        small.train(was)

    result = train(run_dir=out, student=small, loss_fn=step_loss, batches=batches, config=config.train,
                   resume=resume_from, validate=validate)
    ema_weights_into(small, result)
    small.eval()
    validate(result.steps)
    decoder_dir = save_decoder(small, out / "decoder", teacher_vae=teacher_vae, arch=config.arch, width=config.width,
                               teacher=str(teacher_model.path))
    outputs = {"decoder": "decoder", "stats": "stats.jsonl", "val": "val"}
    if config.into is not None:
        write_student(Path(config.into), decoder_dir, out / "student")
        outputs["student"] = "student"
    metrics = {
        "final_loss": result.final_loss, "train_seconds": result.seconds, "stopped_by": result.stopped_by,
        "decoder_parameters": sd.decoder_parameters(small),
        "teacher_decoder_parameters": sd.decoder_parameters(teacher_vae),
        "psnr_db": decode_psnr(small, teacher_vae, val_z[: config.eval_images]),
        "psnr_images": min(len(val_z), config.eval_images),
        "cached_latents": cached is not None,
    }
    metrics["decoder_params_ratio"] = metrics["decoder_parameters"] / metrics["teacher_decoder_parameters"]
    entries = [input_entry(teacher_model.path, spec=config.teacher), input_entry(config.shards)]
    entries += [input_entry(Path(config.into), role="into")] if config.into is not None else []
    return write_manifest(
        out, stage="distill-decoder", config=resolved_config(config), inputs=entries, outputs=outputs,
        counts={"steps": result.steps, "samples": result.steps * config.train.batch_size * config.train.grad_accum,
                "lost": listed.recorded()},
        metrics=metrics, seed=config.train.seed, files=recorded_files(out))


def records_config(student: Path) -> dict:
    """The vae/config.json of a pipeline folder, as a dict."""
    import json

    path = Path(student) / "vae" / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SnapdistillError(f"{path}: unreadable VAE config ({e})") from e
