"""`distill-steps --mode consistency --to M`: latent consistency distillation (see `consistency.py`).

The student takes w = s − 1 (time_cond_proj_dim): from a base teacher it is the teacher with a zero-initialised
guidance input, and the teacher runs CFG on [uncond; cond] in the solver; from a stage-1 student it is a copy,
and the teacher embeds w itself. Its target network is an EMA of it (`--target-ema`), checkpointed with the
resume state. It is saved with an `LCMScheduler` whose grid is the one it was trained on, so stock diffusers
samples it at any step count up to N (M, 2·M, …), one UNet call per step; M is the count recorded as its own.
"""

from __future__ import annotations

import copy
from pathlib import Path

from snapdistill.distill.steps_config import StepsConfig


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
