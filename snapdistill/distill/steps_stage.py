"""Stage 2, `distill-steps --from N --to M`: a student takes one step where its teacher took N/M.

`direct` is SnapFusion's single stage N→M (vanilla step distillation balanced against the CFG-aware
loss). `progressive` is Salimans & Ho's rounds N→N/2→…→M, each round's student teaching the next and
each round saved as a sub-run with its own manifest. Other modes are routes of their own (`routes.py`).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from snapdistill.diffusion import DiffusionModel
from snapdistill.dist import process_state
from snapdistill.distill.features import with_features
from snapdistill.distill.grid import final_alpha_cumprod, student_grid
from snapdistill.distill.guided import Guided, StudentKind
from snapdistill.distill.losses import StepLoss
from snapdistill.distill.stage import (
    Teacher,
    finish,
    load_teacher,
    prepare_run,
    resolved_config,
    resume_point,
    train_and_save,
)
from snapdistill.distill.steps_config import Landing, StepsConfig, check_step_teacher, landing
from snapdistill.distill.student import (
    copy_student,
    guided_student,
    student_prediction_type,
    student_scheduler,
)
from snapdistill.manifest import MANIFEST
from snapdistill.models.student_record import StudentRecord


def rounds(config: StepsConfig) -> list[tuple[int, int]]:
    """(teacher steps, student steps) of each training round."""
    if config.mode == "direct":
        return [(config.from_steps, config.to_steps)]
    out, n = [], config.from_steps
    while n > config.to_steps:
        out.append((n, n // 2))
        n //= 2
    return out


def round_loss(teacher: Guided, student: StudentKind, scheduler_config: Mapping, n: int, m: int,
               teacher_substeps: int = 1, **options) -> StepLoss:
    """The `StepLoss` of a round N → M: the student's M-step grid, and the teacher's N-step trajectory as the
    target, each teacher step split into `teacher_substeps` solver substeps ((N/M)·substeps calls per landing).

    One substep is the teacher's own N-step sampler. More integrate the teacher's ODE more closely: on the toy
    world a 16->8 student with 2 substeps per teacher step (4 calls per landing) reached toy FID 424 against
    472 with 1 (same stage-1 teacher, 250 steps). `options` are StepLoss's cfg_prob, cfg_range, space and gamma.
    """
    schedule = teacher.model.schedule
    return StepLoss(teacher=teacher, student=student, schedule=schedule, grid=student_grid(scheduler_config, m),
                    substeps=n // m * teacher_substeps,
                    final_alpha_cumprod=final_alpha_cumprod(scheduler_config, schedule), **options)


def _student_unet(config: StepsConfig, teacher_unet, w_dim: int | None, arch: str) -> tuple:
    """(student UNet, its w dim): a copy of the teacher, or, with `embed_guidance` on a teacher without a w
    input, the teacher with a zero-initialised guidance input (it learns the guided landing in one pass)."""
    if config.embed_guidance and w_dim is None:
        return guided_student(teacher_unet, config.cond_dim, arch), config.cond_dim
    return copy_student(teacher_unet, arch), w_dim


def _train_round(config: StepsConfig, teacher: Teacher, teacher_model: DiffusionModel, w_dim: int | None,
                 n: int, m: int, run_dir: Path, resume_from, student_type: str, lands: Landing) -> tuple:
    common = config.common
    arch = common.student_arch if n == config.from_steps else "same"  # blocks are removed in the first round only
    unet, student_w = _student_unet(config, teacher_model.unet, w_dim, arch)
    unet = unet.to(teacher.pipe.device)
    loss = round_loss(Guided(teacher_model, w_dim), StudentKind(student_type, student_w), teacher.pipe.scheduler.config,
                      n, m, lands.teacher_substeps, cfg_prob=config.cfg_prob, cfg_range=config.cfg_range,
                      space=lands.target_space, gamma=config.gamma, solver=lands.teacher_solver)
    grid = loss.grid
    loss = with_features(loss, unet, out_weight=common.out_weight, feat_weight=common.feat_weight)

    record = StudentRecord(stage="distill-steps", num_inference_steps=m, timesteps=grid[:-1], mode=config.mode,
                           from_steps=n, guidance_embedding=student_w is not None, prediction_type=student_type,
                           student_arch=common.student_arch)
    scheduler = student_scheduler(teacher.pipe.scheduler, steps=m, prediction_type=student_type)
    result = train_and_save(
        common=common, teacher=teacher, student_unet=unet, loss=loss, scheduler=scheduler, record=record,
        stage="distill-steps", config=resolved_config(config), resume_from=resume_from,
        teacher_steps=config.from_steps, student_steps=m, run_dir=run_dir,
    )
    return result, DiffusionModel(unet.eval().requires_grad_(False), teacher_model.schedule, student_type), student_w


def _finished_round(run_dir: Path, teacher_model: DiffusionModel, student_type: str) -> DiffusionModel:
    """The student of a round that finished before a resume, as the next round's teacher."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(run_dir / "student" / "unet").to(teacher_model.unet.device)
    return DiffusionModel(unet.eval().requires_grad_(False), teacher_model.schedule, student_type)


def run(config: StepsConfig) -> Path | None:
    """Train every round, save `student/` (the last round's), write the manifest."""
    config.check()
    common = config.common
    teacher = load_teacher(common)
    record = StudentRecord.read(teacher.path)
    teacher_steps = record.grid_steps if record else None  # a teacher trained for one step count on one grid
    check_step_teacher(config, teacher_steps)
    prepare_run(common.out, resolved_config(config), resume=common.resume, overwrite=common.overwrite)
    teacher_model = DiffusionModel.from_pipeline(teacher.pipe)
    w_dim = teacher.pipe.unet.config.time_cond_proj_dim
    progressive = config.mode == "progressive"
    plan = rounds(config)
    sub_runs, result, landings = {}, None, []
    for k, (n, m) in enumerate(plan, 1):
        # Every round after the first learns from the previous round's student, an n-step student.
        student_type = student_prediction_type(common.student_prediction, teacher_model.prediction_type, m)
        lands = landing(config, n if k > 1 else teacher_steps, student_type)
        landings.append({"round": [n, m], **lands._asdict()})
        run_dir = Path(common.out) / f"round-{k}-{n}to{m}" if progressive else Path(common.out)
        if progressive and (run_dir / MANIFEST).is_file():  # finished before a resume
            teacher_model = _finished_round(run_dir, teacher_model, student_type)
            w_dim = teacher_model.unet.config.time_cond_proj_dim
            sub_runs[f"round_{k}"] = run_dir.name
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        result, teacher_model, w_dim = _train_round(config, teacher, teacher_model, w_dim, n, m, run_dir,
                                                    resume_point(run_dir, common.resume), student_type, lands)
        if progressive:
            finish(stage="distill-steps", common=common,
                   config={**resolved_config(config), "round": [n, m], "landings": landings[-1:]},
                   teacher=teacher, result=result, run_dir=run_dir)
            sub_runs[f"round_{k}"] = run_dir.name
    if progressive and process_state().is_main_process:
        last = Path(common.out) / f"round-{len(plan)}-{plan[-1][0]}to{plan[-1][1]}"
        shutil.copytree(last / "student", Path(common.out) / "student", dirs_exist_ok=True)
        shutil.copy(last / "README.md", Path(common.out) / "README.md")
    return finish(stage="distill-steps", common=common, config={**resolved_config(config), "landings": landings},
                  teacher=teacher, result=result, extra_outputs=sub_runs)
