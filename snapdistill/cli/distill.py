"""`snapdistill distill-guidance` and `snapdistill distill-steps`: the two distillation stages."""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer

from snapdistill.cli.app import app, checked_dry_run
from snapdistill.cli.options import (
    AllowDownload,
    AllowLost,
    BatchSize,
    CaptionDropout,
    CheckpointEvery,
    Device,
    DryRun,
    EmaDecay,
    FeatWeight,
    GradAccum,
    GradCheckpointing,
    LearningRate,
    MaxMinutes,
    MaxSteps,
    MixedPrecision,
    Optimizer,
    Out,
    OutWeight,
    Overwrite,
    ReportTo,
    Resolution,
    Resume,
    Seed,
    Shards,
    StudentArch,
    StudentPrediction,
    Teacher,
    ValidateEvery,
    ValPrompts,
    Warmup,
    parse_range,
)


def _common(args: dict):
    """The CommonConfig (and its TrainConfig) of a command: its arguments named like their fields.

    Both commands pass their own arguments and the shared ones (`training_command`), named like the fields.
    """
    from snapdistill.distill.stage import CommonConfig

    common_keys = {f.name for f in fields(CommonConfig)} - {"train"}
    return CommonConfig(train=train_config(args), **{k: v for k, v in args.items() if k in common_keys})


def train_config(args: dict):
    """The TrainConfig of a training command's arguments (the loop options, named like its fields)."""
    from snapdistill.distill.loop import TrainConfig

    return TrainConfig(**{k: v for k, v in args.items() if k in {f.name for f in fields(TrainConfig)}})


def _student_options(
    student_prediction: StudentPrediction = "auto",
    student_arch: StudentArch = "same",
    feat_weight: FeatWeight = None,
    out_weight: OutWeight = 1.0,
    caption_dropout: CaptionDropout = 0.1,
    val_prompts: ValPrompts = 4,
    resolution: Resolution = None,
    optimizer: Optimizer = "adamw",
    report_to: ReportTo = "none",
) -> None:
    """The UNet-student options both distillation commands take."""


def _loop_options(
    max_steps: MaxSteps = 500,
    max_minutes: MaxMinutes = None,
    batch_size: BatchSize = 16,
    grad_accum: GradAccum = 1,
    lr: LearningRate = None,
    warmup_steps: Warmup = 20,
    ema_decay: EmaDecay = 0.999,
    mixed_precision: MixedPrecision = "no",
    gradient_checkpointing: GradCheckpointing = False,
    checkpoint_every: CheckpointEvery = 100,
    validate_every: ValidateEvery = 0,
    seed: Seed = 0,
    device: Device = None,
    allow_download: AllowDownload = False,
    resume: Resume = None,
    overwrite: Overwrite = False,
    allow_lost: AllowLost = False,
    dry_run: DryRun = False,
) -> None:
    """The training-loop options every training command takes, listed once; `training_command` and
    `loop_command` add them to each."""


def training_command(command):
    """`command` with the UNet-student and training-loop options appended to its own (see `loop_command`)."""
    return loop_command(command, _student_options)


def loop_command(command, *extra):
    """`command` with the parameters of `extra` option lists, then `_loop_options`', appended to its own.

    Typer reads a command's options from `__signature__` and `__annotations__`, so the shared options are
    declared once (above) and reach the command as `**shared`.
    """
    def params(fn) -> list[inspect.Parameter]:  # with their annotations evaluated (this module has lazy ones)
        hints = typing.get_type_hints(fn, include_extras=True)
        return [p.replace(annotation=hints[p.name]) for p in inspect.signature(fn).parameters.values()
                if p.kind is not p.VAR_KEYWORD]

    @functools.wraps(command)
    def wrapper(**kwargs):
        return command(**kwargs)

    shared = [p for options in (*extra, _loop_options) for p in params(options)]
    wrapper.__signature__ = inspect.Signature([*params(command), *shared])
    wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
    return wrapper


def _launch(config, stage_run, dry_run: bool, student_overrides: dict | None = None) -> None:
    if checked_dry_run(config, dry_run):
        from snapdistill.distill.memory import describe, estimate_run

        found = estimate_run(config.common, student_overrides=student_overrides,
                             fake_score=getattr(config, "mode", None) == "dmd")
        lines = describe(*found, config.common) if found else ["no memory estimate: a single-file checkpoint"]
        typer.echo("\n".join(lines), err=True)
        return
    manifest = stage_run(config)
    if manifest is not None:
        typer.echo(f"student written to {Path(config.common.out) / 'student'} ({manifest})")


@app.command("distill-guidance")
@training_command
def distill_guidance(
    teacher: Teacher = "toy",
    shards: Shards = Path("runs/toy/shards"),
    out: Out = Path("runs/guided"),
    guidance_range: Annotated[str, typer.Option("--guidance-range", help="s ~ U(LOW, HIGH) per sample.")] = "2-14",
    cond_dim: Annotated[int, typer.Option("--cond-dim", help="time_cond_proj_dim of the student.")] = 256,
    loss_space: Annotated[str, typer.Option("--loss-space", help="eps, x0 (max(SNR,1) weighted) or v.")] = "eps",
    **shared,
) -> None:
    """Stage 1: a w-conditioned student learns the teacher's guided output in one UNet pass.

    Examples:

      snapdistill distill-guidance --teacher toy --shards runs/toy/shards --max-steps 300 --out runs/guided

      accelerate launch -m snapdistill distill-guidance --teacher sd15 --shards data/laion-art --mixed-precision bf16 --gradient-checkpointing --out runs/sd15-guided

      snapdistill distill-guidance --out runs/guided --resume latest
    """
    common = _common({**locals(), **shared})
    from snapdistill.distill import guidance_stage as stage

    config = stage.GuidanceConfig(common=common, guidance_range=parse_range(guidance_range, "--guidance-range"),
                                  cond_dim=cond_dim, loss_space=loss_space)
    _launch(config, stage.run, shared["dry_run"], {"time_cond_proj_dim": cond_dim})


@app.command("distill-steps")
@training_command
def distill_steps(
    teacher: Teacher = "toy",
    shards: Shards = Path("runs/toy/shards"),
    out: Out = Path("runs/steps"),
    from_steps: Annotated[int | None, typer.Option(
        "--from", help="Teacher steps N \\[default: 16; --mode consistency takes none].")] = None,
    to_steps: Annotated[int | None, typer.Option(
        "--to", help="Student steps M (divides N); with --mode consistency, the student's default step count "
                     "(it samples any count up to --num-ddim-timesteps); --mode dmd: 1, 2, 4 or 8 (the generator's "
                     "steps) \\[default: 8; dmd: 1].")] = None,
    mode: Annotated[str, typer.Option(
        "--mode", help="direct (one stage N->M), progressive (N->N/2->...->M), consistency (latent consistency "
                       "distillation, sampled with LCMScheduler) or dmd (a 1-step generator by distribution "
                       "matching, from prompts alone).")] = "direct",
    target_space: Annotated[str | None, typer.Option(
        "--target-space", help="The parametrisation the landing target is regressed in: x0 (max(SNR, 1) weighted), "
                               "eps or v \\[default: the student's own output (eps or v) when the round's teacher is a "
                               "step-distilled student of at most 4 steps; else x0].")] = None,
    cfg_prob: Annotated[float, typer.Option("--cfg-prob", help="Share of CFG-aware batches.")] = 0.1,
    cfg_range: Annotated[str, typer.Option("--guidance-range", "--cfg-range",
                                           help="s ~ U(LOW, HIGH) in CFG-aware batches (--cfg-range: its old name).")] = "2-14",
    gamma: Annotated[float, typer.Option("--gamma", help="Weight of the original denoising loss (0: off).")] = 0.0,
    embed_guidance: Annotated[bool, typer.Option(
        "--embed-guidance/--no-embed-guidance",
        help="With a base teacher: the student takes the guidance scale as an input (w = s - 1) and learns the "
             "teacher's guided landing, one UNet call per step (stages 1 and 2 in one).")] = False,
    cond_dim: Annotated[int, typer.Option("--cond-dim", help="time_cond_proj_dim of an --embed-guidance student.")] = 256,
    teacher_substeps: Annotated[int | None, typer.Option(
        "--teacher-substeps", help="Solver substeps per teacher step in the landing target (1: the teacher's own "
                                   "N-step trajectory; more: closer to its ODE, at that many times the teacher calls) "
                                   "\\[default: 1 when the round's teacher is a step-distilled student of at most 4 "
                                   "steps, which knows only its own coarse grid; else 2].")] = None,
    teacher_solver: Annotated[str | None, typer.Option(
        "--teacher-solver", help="The teacher's solver in the landing target: dpmsolver++ (second order, 2M, on each "
                                 "landing's own substeps) or ddim \\[default: ddim when the round's teacher is a "
                                 "step-distilled student of at most 4 steps (its own sampler); else dpmsolver++].")] = None,
    loss: Annotated[str | None, typer.Option(
        "--loss", help="consistency: distance between online and target outputs, huber (pseudo-Huber) or l2 "
                       "\\[default: huber].")] = None,
    huber_c: Annotated[float | None, typer.Option(
        "--huber-c", help="consistency: the pseudo-Huber c \\[default: 0.001].")] = None,
    target_ema: Annotated[float | None, typer.Option(
        "--target-ema", help="consistency: EMA rate mu of the target network \\[default: 0.95].")] = None,
    num_ddim_timesteps: Annotated[int | None, typer.Option(
        "--num-ddim-timesteps", help="consistency: N teacher timesteps of the skipping-step solver (k = 1000/N "
                                     "skipped per step; LCMScheduler's original_inference_steps) \\[default: 50].")] = None,
    real_guidance: Annotated[float | None, typer.Option(
        "--real-guidance", help="dmd: CFG scale of the real score, the teacher's x0 prediction \\[default: 1.5].")] = None,
    fake_updates: Annotated[int | None, typer.Option(
        "--fake-updates", help="dmd: fake score updates per generator update \\[default: 5].")] = None,
    fake_lr: Annotated[float | None, typer.Option(
        "--fake-lr", help="dmd: the fake score network's AdamW rate (constant) \\[default: --lr].")] = None,
    prompts: Annotated[Path | None, typer.Option(
        "--prompts", help="dmd: a prompt file read instead of the shards' captions (as sample's --prompts: .txt one a "
                      "line, .json a list, .jsonl objects with \"prompt\").")] = None,
    gan_weight: Annotated[float | None, typer.Option(
        "--gan-weight", help="dmd: weight of the GAN term (a head on the fake network's mid-block features telling "
                             "noised real latents of the --shards from noised samples; DMD2 used 1e-3 to 5e-3); 0: "
                             "none, no image read \\[default: 0].")] = None,
    init: Annotated[Path | None, typer.Option(
        "--init", help="dmd: a student folder whose UNet the generator starts from (a stage-1 student, a step "
                       "student of the same teacher) \\[default: the teacher].")] = None,
    gan_head_weight: Annotated[float | None, typer.Option(
        "--gan-head-weight", help="dmd: weight of the head's loss beside the fake network's denoising loss "
                                  "\\[default: 0.01].")] = None,
    **shared,
) -> None:
    """Stage 2: a student takes one step where its teacher took N/M (teacher: a base model or a stage-1 student).

    Examples:

      snapdistill distill-steps --teacher sd15 --from 16 --to 8 --shards data/laion-art --out runs/sd15-8

      snapdistill distill-steps --teacher runs/guided/student --from 16 --to 4 --mode progressive --out runs/p4

      snapdistill distill-steps --teacher runs/p4/student --from 4 --to 1 --mode progressive --out runs/p1

      snapdistill distill-steps --teacher sd21 --from 16 --to 8 --student-prediction v_prediction --out runs/v8

      snapdistill distill-steps --teacher runs/guided/student --from 16 --to 8 --student-arch bk-small --out runs/small8

      snapdistill distill-steps --mode consistency --teacher runs/guided/student --to 4 --loss huber --out runs/lcm4

      snapdistill distill-steps --mode dmd --teacher sd15 --prompts prompts.txt --out runs/dmd1

      snapdistill distill-steps --mode dmd --to 2 --teacher sd15 --shards data/laion-art --gan-weight 3e-3 --out runs/dmd2
    """
    common = _common({**locals(), **shared})
    from snapdistill.distill import routes
    from snapdistill.distill.steps_config import ConsistencyConfig, DMDConfig, StepsConfig

    given = {k: v for k, v in {"distance": loss, "huber_c": huber_c, "target_ema": target_ema,
                               "num_ddim_timesteps": num_ddim_timesteps}.items() if v is not None}
    consistency = ConsistencyConfig(**given) if given or mode == "consistency" else None
    given = {k: v for k, v in {"real_guidance": real_guidance, "fake_updates": fake_updates, "fake_lr": fake_lr,
                               "prompts": prompts, "gan_weight": gan_weight,
                               "gan_head_weight": gan_head_weight, "init": init}.items() if v is not None}
    dmd = DMDConfig(**given) if given or mode == "dmd" else None
    config = StepsConfig(common=common, from_steps=from_steps, to_steps=to_steps, mode=mode,
                         target_space=target_space, cfg_prob=cfg_prob,
                         cfg_range=parse_range(cfg_range, "--guidance-range"), gamma=gamma,
                         embed_guidance=embed_guidance, cond_dim=cond_dim, teacher_substeps=teacher_substeps,
                         teacher_solver=teacher_solver, consistency=consistency, dmd=dmd)
    _launch(config, routes.run, shared["dry_run"], {"time_cond_proj_dim": cond_dim} if embed_guidance else None)
