"""What both distillation stages do around their loss: load the teacher, stream the data, run the
shared loop, validate, and save the student with its model card and manifest."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from snapdistill.data.latent_cache import cache_identity, cache_record, check_cache
from snapdistill.data.shards import ShardList
from snapdistill.distill import tracking
from snapdistill.distill.arch import check_arch
from snapdistill.distill.checkpoint_files import recorded_files
from snapdistill.distill.data import ShardPairs, find_shards
from snapdistill.distill.loop import TrainConfig, TrainResult, auto_lr, ema_weights_into, train
from snapdistill.distill.losses import Batch
from snapdistill.distill.run import (
    first_captions,
    json_ready,
    model_card,
    prepare_run,
    resume_point,
    save_grid_rows,
)
from snapdistill.distill.student import check_prediction_choice, save_student
from snapdistill.errors import SnapdistillError
from snapdistill.manifest import atomic_write_text, input_entry, write_manifest
from snapdistill.models.encoding import TextEmbeddings, encode_latents
from snapdistill.models.loading import (
    check_resolution,
    load_pipeline,
    native_size,
    resolve_model,
)
from snapdistill.models.student_record import StudentRecord
from snapdistill.outdir import check_out_apart
from snapdistill.sampling.render import generate


@dataclass
class CommonConfig:
    """Options both stages share."""

    teacher: str                              # teacher name, pipeline folder or stage-1 student folder
    shards: Path                              # a build-data/recaption output folder
    out: Path                                 # the run folder
    train: TrainConfig = field(default_factory=TrainConfig)
    student_prediction: str = "auto"          # auto | same | v_prediction (SnapFusion's switch); see student.py
    student_arch: str = "same"                # same | bk-base | bk-small | bk-tiny (BK-SDM block removal)
    feat_weight: float | None = None          # feature-KD weight; None: 1 for a block-removed student, else 0
    out_weight: float = 1.0                   # weight of the output-level loss (the stage's target)
    caption_dropout: float = 0.1              # share of empty captions (trains the unconditional branch)
    val_prompts: int = 4                      # validation grid rows use the first N captions of the shards (0: none)
    resolution: int | None = None             # training image side; None: the teacher's native size
    device: str | None = None
    allow_download: bool = False
    resume: str | None = None                 # "latest" or a checkpoint folder
    overwrite: bool = False
    allow_lost: bool = False                  # train without missing or cut shards' samples, recording them

    def __post_init__(self):
        if self.feat_weight is None:
            self.feat_weight = 0.0 if self.student_arch == "same" else 1.0
        self.check()

    def check(self) -> None:
        """Refuse impossible settings with one line, before the teacher loads or anything is written."""
        check_arch(self.student_arch)
        check_prediction_choice(self.student_prediction)
        if not (self.feat_weight >= 0 and self.out_weight >= 0):  # also false for nan
            raise SnapdistillError(f"--feat-weight and --out-weight must be >= 0, got {self.feat_weight} "
                                   f"and {self.out_weight}")
        if not 0 <= self.caption_dropout <= 1:
            raise SnapdistillError(f"--caption-dropout must be in [0, 1], got {self.caption_dropout}")
        if self.val_prompts < 0:
            raise SnapdistillError(f"--val-prompts must be an integer >= 0 (0: no validation grids), got {self.val_prompts}")
        if self.resolution is not None and self.resolution <= 0:
            raise SnapdistillError(f"--resolution must be a positive integer, got {self.resolution}")
        self.train.check()


@dataclass
class Teacher:
    pipe: Any
    path: Path
    spec: str


def training_shards(common: CommonConfig) -> ShardList:
    """The shards of `--shards`, as its manifest lists them, checked against the disk once per run (a missing or
    cut shard is one line, or with --allow-lost-samples a warning, printed once)."""
    if getattr(common, "_listed", None) is None:
        common._listed = find_shards(common.shards, allow_lost=common.allow_lost, stage="distill")
    return common._listed


def load_teacher(common: CommonConfig, *, shards: bool = True) -> Teacher:
    """The teacher pipeline in fp32 on this process's device (frozen).

    Both stages call this first, so the settings and `--out` are checked here, before the teacher loads and
    before `prepare_run` may clear `--out`: an `--out` overlapping the teacher or the shards is refused, and
    (when the run reads `shards`) a missing or cut shard too.
    """
    from snapdistill.dist import process_state

    common.check()  # the config may have changed since it was made
    model = resolve_model(common.teacher, allow_download=common.allow_download)
    check_out_apart(common.out, {"--teacher": model.path, "--shards": common.shards})
    if shards:
        training_shards(common)
    check_resolution(common.resolution, **teacher_configs(common))  # from the JSON configs, before weights load
    device = common.device or str(process_state().device)
    pipe = load_pipeline(model, device=device, allow_download=common.allow_download)
    check_resolution(common.resolution, unet=dict(pipe.unet.config), vae=dict(pipe.vae.config))
    record = cache_record(common.shards)
    if record is not None:  # before training: cached latents of another VAE, text encoder or size are refused
        identity = cache_identity(pipe, model_path=model.path, single_file=model.single_file,
                                  size=train_size(pipe, common))
        check_cache(record, identity, shards=common.shards, teacher=common.teacher)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False).eval()
    if common.train.lr is None:  # resolved here, so config.json and the manifest record the rate used
        common.train.lr = auto_lr(pipe.unet)
    return Teacher(pipe, model.path, common.teacher)


def _teacher_json(common: CommonConfig, part: str, name: str, what: str) -> dict:
    """The teacher's `part/name` config: a JSON read, no weights ({} for a single-file checkpoint)."""
    model = resolve_model(common.teacher, allow_download=common.allow_download)
    path = model.path / part / name
    if model.single_file or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SnapdistillError(f"{path}: unreadable {what} config ({e})") from e


def teacher_unet_config(common: CommonConfig) -> dict:
    """The teacher's unet/config.json: a JSON read, no weights ({} for a single-file checkpoint)."""
    return _teacher_json(common, "unet", "config.json", "UNet")


def teacher_scheduler_config(common: CommonConfig) -> dict:
    """The teacher's scheduler/scheduler_config.json: a JSON read ({} for a single-file checkpoint)."""
    return _teacher_json(common, "scheduler", "scheduler_config.json", "scheduler")


def teacher_configs(common: CommonConfig) -> dict:
    """{"unet": ..., "vae": ...}: the teacher's JSON configs ({} each for a single-file checkpoint)."""
    return {part: _teacher_json(common, part, "config.json", part) for part in ("unet", "vae")}


def frozen_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype of the frozen teacher, VAE and text encoder: the mixed-precision one (the student keeps fp32)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def freeze_to(pipe, dtype: torch.dtype) -> None:
    """Cast the frozen parts (teacher UNet, VAE, text encoder) to `dtype`, in place."""
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        # torch's own `to`: diffusers' warns about modules kept in fp32, and SD's UNet and VAE have none.
        torch.nn.Module.to(part, dtype)


def train_size(pipe, common: CommonConfig) -> int:
    """The training image side: --resolution, else the teacher's native size."""
    return common.resolution or native_size(pipe)


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def caption_drops(n: int, caption_dropout: float, gen: torch.Generator) -> torch.Tensor:
    """Which of n captions are replaced by the empty one (trains the unconditional branch): one draw from `gen`."""
    return torch.rand(n, generator=gen) < caption_dropout


def drop_captions(captions: list[str], caption_dropout: float, gen: torch.Generator) -> list[str]:
    """The captions with `caption_drops` of them emptied."""
    return ["" if d else c for c, d in zip(captions, caption_drops(len(captions), caption_dropout, gen).tolist())]


def batch_maker(teacher: Teacher, common: CommonConfig) -> tuple[Callable[[int], Iterator], Callable]:
    """(batches(skip) of raw (pixels, captions), prepare(raw, gen) -> Batch on the teacher's device).

    From shards with cached latents (checked against the teacher by `load_teacher`), raw batches are (latents,
    text embeddings) and only the empty caption is encoded here; the order and the caption-dropout draws are
    the same as from the images.
    """
    pipe = teacher.pipe
    cached = cache_record(common.shards)
    pairs = ShardPairs(training_shards(common), size=train_size(pipe, common), seed=common.train.seed,
                       cached=cached, allow_lost=common.allow_lost)
    text = TextEmbeddings(pipe.tokenizer, pipe.text_encoder)

    def batches(skip: int) -> Iterator:
        return pairs.batches(common.train.batch_size, skip=skip)

    def prepare(raw, gen: torch.Generator) -> Batch:
        pixels, captions = raw
        captions = drop_captions(captions, common.caption_dropout, gen)
        return Batch(latents=encode_latents(pipe.vae, pixels), cond=text(captions), uncond=text([""]))

    def prepare_cached(raw, gen: torch.Generator) -> Batch:
        latents, embeddings = raw
        drop = caption_drops(len(latents), common.caption_dropout, gen)
        uncond = text([""])
        cond = torch.where(drop[:, None, None].to(uncond.device), uncond, embeddings.to(uncond.device))
        return Batch(latents=latents.to(pipe.device), cond=cond, uncond=uncond)

    return batches, (prepare if cached is None else prepare_cached)


def validator(teacher: Teacher, student_unet, scheduler, common: CommonConfig, *, teacher_steps: int,
              student_steps: int, guidance: float = 7.5, student_guidance: float | None = None,
              prompts: list[str] | None = None) -> Callable[[int], Any] | None:
    """A callback writing val/step-N.png (and returning it): the teacher's row (at `guidance`) above the student's
    (at `student_guidance`, default the same), same prompts and seeds, at the training resolution. The prompts are
    the first --val-prompts of `prompts`, else of the shards' captions. None with --val-prompts 0. Each row's time
    goes to the log."""
    from diffusers import StableDiffusionPipeline

    from snapdistill.sampling.schedulers import make_scheduler

    if common.val_prompts == 0:
        return None
    pipe = teacher.pipe
    prompts = (prompts[:common.val_prompts] if prompts is not None
               else first_captions([str(p) for p in training_shards(common).paths], common.val_prompts))
    student_guidance = guidance if student_guidance is None else student_guidance
    seeds = list(range(len(prompts)))
    size = train_size(pipe, common)
    # The student keeps fp32 beside frozen parts in bf16/fp16: autocast runs the mixed pipeline.
    dtype = frozen_dtype(common.train.mixed_precision)
    mixed = torch.autocast(pipe.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def timed(what: str, render_pipe, steps: int, scale: float) -> Any:
        started = time.perf_counter()
        with mixed:
            images = generate(render_pipe, prompts, seeds, steps=steps, guidance=scale, size=size)
        log(f"validation: {what} row, {len(prompts)} prompts x {steps} steps at {size} px: "
            f"{time.perf_counter() - started:.1f} s")
        return images

    reference = []  # rendered at the first grid, not before training starts

    def validate(step: int) -> Any:
        if not reference:
            ref_pipe = StableDiffusionPipeline(**{**pipe.components, "requires_safety_checker": False,
                                                  "scheduler": make_scheduler("dpmsolver++", pipe.scheduler.config)})
            ref_pipe.set_progress_bar_config(disable=True)
            reference.append(timed("teacher reference", ref_pipe, teacher_steps, guidance))
        was_training = student_unet.training
        student_pipe = StableDiffusionPipeline(**{**pipe.components, "requires_safety_checker": False,
                                                  "unet": student_unet.eval(), "scheduler": scheduler})
        student_pipe.set_progress_bar_config(disable=True)
        images = timed(f"student (step {step})", student_pipe, student_steps, student_guidance)
        student_unet.train(was_training)
        return save_grid_rows([reference[0], images], Path(common.out) / "val" / f"step-{step:07d}.png")

    return validate


def train_and_save(*, common: CommonConfig, teacher: Teacher, student_unet, loss: Callable, scheduler,
                   record: StudentRecord,
                   stage: str, config: dict, resume_from: Path | None, teacher_steps: int, student_steps: int,
                   run_dir: Path | None = None, after_step: Callable | None = None,
                   extra_module=None, extra_optimizer=None, data: tuple | None = None,
                   val_prompts: list[str] | None = None, student_guidance: float | None = None) -> TrainResult:
    """Train `student_unet` on `loss(module, batch, gen)`, then save `student/` (EMA weights), the model card and
    stats. The loop hands the loss the (possibly DDP-wrapped) module it optimises; `after_step`, `extra_module` and
    `extra_optimizer` go to the loop as they are (see `loop.train`). `data` is (batches, prepare) when the route
    reads something else than `batch_maker`'s image batches (a prompt-only route), with its validation prompts
    `val_prompts`; `student_guidance` is the scale the validation grid samples the student at (default 7.5)."""
    run_dir = Path(run_dir or common.out)
    common_here = copy.copy(common)
    common_here.out = run_dir
    student_unet.float()  # fp32 master weights, built before the frozen parts are cast below
    freeze_to(teacher.pipe, frozen_dtype(common.train.mixed_precision))
    batches, prepare = data or batch_maker(teacher, common)
    validate = validator(teacher, student_unet, scheduler, common_here, teacher_steps=teacher_steps,
                         student_steps=student_steps, student_guidance=student_guidance, prompts=val_prompts)

    def step_loss(module, raw, gen):
        return loss(module, prepare(raw, gen), gen)

    result = train(run_dir=run_dir, student=student_unet, loss_fn=step_loss, batches=batches, config=common.train,
                   resume=resume_from, validate=validate, after_step=after_step, extra_module=extra_module,
                   extra_optimizer=extra_optimizer)
    from snapdistill.dist import process_state

    ema_weights_into(student_unet, result)  # on every process: a progressive round's student teaches the next
    size = train_size(teacher.pipe, common)
    if common.resolution:  # the student's native size, so stock diffusers samples it there by default
        record = dataclasses.replace(record, resolution=size)
    if process_state().is_main_process:
        if validate is not None:
            tracking.log_grid(result.trackers, validate(result.steps), result.steps)
        tracking.finish(result.trackers)
        if common.resolution:
            student_unet.register_to_config(sample_size=size // teacher.pipe.vae_scale_factor)
        save_student(run_dir / "student", teacher_dir=teacher.path, unet=student_unet, scheduler=scheduler,
                     record=record)
        summary = {"steps": result.steps, "final_loss": result.final_loss, "stopped_by": result.stopped_by,
                   "train_seconds": round(result.seconds, 1)}
        card = model_card(stage=stage, config=config, result=summary, record=record)
        atomic_write_text(run_dir / "student" / "README.md", card)
        atomic_write_text(run_dir / "README.md", card)
    return result


def finish(*, stage: str, common: CommonConfig, config: dict, teacher: Teacher, result: TrainResult,
           run_dir: Path | None = None, extra_outputs: dict | None = None,
           data_input: Path | None = None) -> Path | None:
    """Write the run's manifest (main process only); return its path. `data_input` is what the run read instead
    of the shards (a prompt file)."""
    from snapdistill.dist import process_state

    state = process_state()
    if not state.is_main_process:
        return None
    run_dir = Path(run_dir or common.out)
    return write_manifest(
        run_dir,
        stage=stage,
        config=config,
        inputs=[input_entry(teacher.path, spec=teacher.spec), input_entry(data_input or common.shards)],
        outputs={"student": "student", "stats": "stats.jsonl", "model_card": "README.md",
                 **({"val": "val"} if common.val_prompts else {}),
                 **(extra_outputs or {})},
        counts={"steps": result.steps, "processes": state.num_processes,
                "samples": result.steps * common.train.batch_size * common.train.grad_accum * state.num_processes,
                "lost": [] if data_input else training_shards(common).recorded()},
        metrics={"final_loss": result.final_loss, "train_seconds": result.seconds, "stopped_by": result.stopped_by},
        seed=common.train.seed,
        files=recorded_files(run_dir),  # the checkpoints, hashed when written: not read a second time
    )


def resolved_config(stage_config) -> dict:
    """The JSON-able config recorded in config.json and the manifest."""
    return json_ready(asdict(stage_config))


__all__ = ["CommonConfig", "Teacher", "finish", "load_teacher", "training_shards", "prepare_run", "resolved_config", "resume_point",
           "teacher_scheduler_config", "teacher_unet_config", "train_and_save"]
