"""`distill-steps --mode consistency --to M`: latent consistency distillation (see `consistency.py`).

The student takes w = s − 1 (time_cond_proj_dim): from a base teacher it is the teacher with a zero-initialised
guidance input, and the teacher runs CFG on [uncond; cond] in the solver; from a stage-1 student it is a copy,
and the teacher embeds w itself. Its target network is an EMA of it (`--target-ema`), checkpointed with the
resume state. It is saved with an `LCMScheduler` whose grid is the one it was trained on, so stock diffusers
samples it at any step count up to N (M, 2·M, …), one UNet call per step; M is the count recorded as its own.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from snapdistill.errors import SnapdistillError

if TYPE_CHECKING:
    from snapdistill.distill.steps_stage import StepsConfig


@dataclass
class ConsistencyConfig:
    distance: str = "huber"             # huber (pseudo-Huber, as LCM) | l2
    huber_c: float = 0.001              # the pseudo-Huber c
    target_ema: float = 0.95            # μ of the target network: target ← μ·target + (1 − μ)·online
    num_ddim_timesteps: int = 50        # N, LCMScheduler's original_inference_steps; the solver skips k = T // N

    def check(self, to_steps: int) -> None:
        """Refuse impossible settings with one line (the teacher's T is checked by `check_schedule`)."""
        from snapdistill.distill.consistency import check_distance

        check_distance(self.distance)
        if not (math.isfinite(self.huber_c) and self.huber_c > 0):
            raise SnapdistillError(f"--huber-c must be a finite number > 0, got {self.huber_c}")
        if not 0 <= self.target_ema < 1:
            raise SnapdistillError(f"--target-ema must be in [0, 1), got {self.target_ema}")
        if self.num_ddim_timesteps < 1:
            raise SnapdistillError(f"--num-ddim-timesteps must be an integer >= 1, got {self.num_ddim_timesteps}")
        if not 1 <= to_steps <= self.num_ddim_timesteps:
            raise SnapdistillError(f"--to {to_steps}: a consistency student samples 1 to --num-ddim-timesteps "
                                   f"({self.num_ddim_timesteps}) steps of its grid")

    def check_schedule(self, num_train_timesteps: int) -> None:
        """Refuse a grid the teacher's schedule cannot hold: N above its T training timesteps."""
        if self.num_ddim_timesteps > num_train_timesteps:
            raise SnapdistillError(f"--num-ddim-timesteps {self.num_ddim_timesteps}: the teacher's schedule has only "
                                   f"{num_train_timesteps} timesteps")


def run(config: StepsConfig) -> Path | None:
    """Train the consistency student, save `student/` with its LCMScheduler, write the manifest."""
    import torch

    from snapdistill.diffusion import DiffusionModel
    from snapdistill.distill.consistency import ConsistencyLoss, ema_update, lcm_scheduler, sampling_timesteps
    from snapdistill.distill.features import with_features
    from snapdistill.distill.guided import Guided, StudentKind
    from snapdistill.distill.stage import (
        finish,
        load_teacher,
        prepare_run,
        resolved_config,
        resume_point,
        teacher_scheduler_config,
        train_and_save,
    )
    from snapdistill.distill.student import copy_student, guided_student, student_prediction_type
    from snapdistill.models.student_record import StudentRecord

    config.check()
    common, cons = config.common, config.consistency
    cons.check_schedule(teacher_scheduler_config(common).get("num_train_timesteps", 1000))
    teacher = load_teacher(common)
    prepare_run(common.out, resolved_config(config), resume=common.resume, overwrite=common.overwrite)
    resume_from = resume_point(common.out, common.resume)
    teacher_model = DiffusionModel.from_pipeline(teacher.pipe)
    cons.check_schedule(teacher_model.schedule.num_train_timesteps)  # a single-file teacher is known only now
    teacher_w = teacher.pipe.unet.config.time_cond_proj_dim
    student_type = student_prediction_type(common.student_prediction, teacher_model.prediction_type)
    if teacher_w is None:
        unet, student_w = guided_student(teacher.pipe.unet, config.cond_dim, common.student_arch), config.cond_dim
    else:
        unet, student_w = copy_student(teacher.pipe.unet, common.student_arch), teacher_w
    unet = unet.to(teacher.pipe.device)
    # The target starts as the online student; made before feature KD hooks the student, so it carries none.
    target_unet = copy.deepcopy(unet).eval().requires_grad_(False)
    kind = StudentKind(student_type, student_w)
    loss = ConsistencyLoss(teacher=Guided(teacher_model, teacher_w), student=kind,
                           target=kind.on(target_unet, teacher_model.schedule), schedule=teacher_model.schedule,
                           num_ddim_timesteps=cons.num_ddim_timesteps, guidance_range=config.cfg_range,
                           distance=cons.distance, huber_c=cons.huber_c)
    loss = with_features(loss, unet, out_weight=common.out_weight, feat_weight=common.feat_weight)

    def update_target(online: torch.nn.Module) -> None:
        ema_update(target_unet, online, cons.target_ema)

    scheduler = lcm_scheduler(teacher.pipe.scheduler.config, num_ddim_timesteps=cons.num_ddim_timesteps,
                              prediction_type=student_type)
    record = StudentRecord(stage="distill-steps", num_inference_steps=config.to_steps,
                           timesteps=sampling_timesteps(scheduler, config.to_steps), mode="consistency",
                           guidance_embedding=True, prediction_type=student_type, student_arch=common.student_arch,
                           guidance_range=list(config.cfg_range), original_inference_steps=cons.num_ddim_timesteps)
    result = train_and_save(
        common=common, teacher=teacher, student_unet=unet, loss=loss, scheduler=scheduler, record=record,
        stage="distill-steps", config=resolved_config(config), resume_from=resume_from,
        teacher_steps=16, student_steps=config.to_steps, after_step=update_target, extra_module=target_unet,
    )
    return finish(stage="distill-steps", common=common, config=resolved_config(config), teacher=teacher,
                  result=result)
