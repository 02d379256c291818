"""`distill-steps --mode dmd --to M`: an M-step generator (M = 1, 2, 4, 8) by distribution matching (see `dmd.py`),
from prompts alone, or with real images for the GAN term (--gan-weight).

The generator G starts as the teacher (a base model, or a stage-1 student that takes w) and maps pure noise at
t = T − 1 to x0 in one UNet call; the real score is the teacher with CFG at --real-guidance (a stage-1 teacher is fed
w instead), the fake score a second copy of the teacher trained on G's samples, with its own AdamW at --fake-lr,
--fake-updates times per generator step. The fake network and its optimiser are the route's state, checkpointed by
the one training loop, so `--resume latest` continues both bit for bit.

Without the GAN term only captions are read: the shards' `txt` (no image is decoded) or `--prompts FILE`; with it,
the shards' images as every other route reads them (their latents are the head's real side). The student folder's
scheduler at one step is a trailing DDIM at t = T − 1 that returns G's x0 exactly (final ᾱ = 1); at M > 1 steps
diffusers' `LCMScheduler` with M original steps, whose grid T − 1, T − 1 − T/M, … and re-noising are G's training
chain. Its guidance is baked in, so the record tells `sample` to feed it 1 (a G that takes w is fed the
real-guidance scale it was trained at).
"""

from __future__ import annotations

from pathlib import Path

from snapdistill.distill.steps_config import StepsConfig


def prompt_data(config: StepsConfig, text, *, seed: int) -> tuple:
    """(batches(skip), prepare(raw, gen) -> PromptBatch, the validation prompts): captions from --prompts or the
    shards, with the caption dropout of the other routes."""
    import torch

    from snapdistill.dist import process_state
    from snapdistill.distill.data import PromptLines, ShardCaptions
    from snapdistill.distill.dmd import PromptBatch
    from snapdistill.distill.run import first_captions
    from snapdistill.distill.stage import drop_captions, training_shards
    from snapdistill.sampling.prompts import prompts_from_file

    common = config.common
    if config.dmd.prompts is not None:
        prompts = prompts_from_file(config.dmd.prompts)
        state = process_state()
        stream, val = PromptLines(prompts, seed=seed, rank=state.process_index, world=state.num_processes), prompts
    else:
        shards = training_shards(common)
        val = first_captions([str(p) for p in shards.paths], common.val_prompts) if common.val_prompts else []
        stream = ShardCaptions(shards, seed=seed, allow_lost=common.allow_lost)

    def batches(skip: int):
        return stream.batches(common.train.batch_size, skip=skip)

    def prepare(captions: list[str], gen: torch.Generator) -> PromptBatch:
        return PromptBatch(cond=text(drop_captions(captions, common.caption_dropout, gen)), uncond=text([""]))

    return batches, prepare, val


def initial_unet(init: Path | None, teacher_unet, teacher_type: str):
    """(the UNet G starts from, its prediction type): the teacher's, or --init's student UNet, which must take the
    teacher's latents and captions."""
    if init is None:
        return teacher_unet, teacher_type
    from diffusers import UNet2DConditionModel

    from snapdistill.errors import SnapdistillError
    from snapdistill.models.student_record import StudentRecord

    unet = UNet2DConditionModel.from_pretrained(Path(init) / "unet")
    for key in ("in_channels", "out_channels", "cross_attention_dim", "sample_size"):
        if unet.config.get(key) != teacher_unet.config.get(key):
            raise SnapdistillError(f"--init {init}: its UNet's {key} is {unet.config.get(key)}, the teacher's "
                                   f"{teacher_unet.config.get(key)}; give a student of this teacher")
    record = StudentRecord.read(Path(init))
    return unet, (record.prediction_type if record and record.prediction_type else teacher_type)


def run(config: StepsConfig) -> Path | None:
    """Train the generator and its fake score, save `student/` with its 1-step scheduler, write the manifest."""
    from snapdistill.diffusion import DiffusionModel
    from snapdistill.distill.consistency import lcm_scheduler, sampling_timesteps
    from snapdistill.distill.dmd import DMDLoss, FakeScore, GANHead, latent_shape
    from snapdistill.distill.guided import Guided, StudentKind
    from snapdistill.distill.stage import (
        finish,
        load_teacher,
        prepare_run,
        resolved_config,
        resume_point,
        train_and_save,
        train_size,
    )
    from snapdistill.distill.student import copy_student, student_prediction_type, student_scheduler
    from snapdistill.errors import SnapdistillError
    from snapdistill.models.encoding import TextEmbeddings
    from snapdistill.models.student_record import StudentRecord
    from snapdistill.outdir import check_out_apart

    config.check()
    common, dmd = config.common, config.dmd
    given = {flag: path for flag, path in (("--prompts", dmd.prompts), ("--init", dmd.init)) if path is not None}
    if given:
        check_out_apart(common.out, given)
    teacher = load_teacher(common, shards=config.dmd.prompts is None)
    teacher_record = StudentRecord.read(teacher.path)
    if teacher_record is not None and teacher_record.step_distilled:
        raise SnapdistillError(f"--teacher {common.teacher} is a {teacher_record.num_inference_steps}-step student; "
                               "--mode dmd needs a teacher that denoises at every time (a base model or a "
                               "distill-guidance student)")
    pipe = teacher.pipe
    teacher_model = DiffusionModel.from_pipeline(pipe)
    # Before prepare_run: an --init that does not fit the teacher is refused with nothing written.
    start, start_type = initial_unet(dmd.init, pipe.unet, teacher_model.prediction_type)
    prepare_run(common.out, resolved_config(config), resume=common.resume, overwrite=common.overwrite)
    resume_from = resume_point(common.out, common.resume)
    w_dim = pipe.unet.config.time_cond_proj_dim
    steps = config.to_steps
    # `auto` is v at every step count: each of G's chains starts with the 1-step problem, x0 from pure noise at T − 1
    # (a G started from a student keeps that student's type).
    student_type = (start_type if dmd.init is not None and common.student_prediction == "auto"
                    else student_prediction_type(common.student_prediction, start_type, 1))
    generator = copy_student(start, common.student_arch).to(pipe.device)
    g_dim = start.config.time_cond_proj_dim
    gan = dmd.gan_weight > 0
    fake_unet = copy_student(pipe.unet).to(pipe.device)
    head = GANHead(fake_unet.config.block_out_channels[-1], seed=common.train.seed).to(pipe.device) if gan else None
    fake = FakeScore(fake_unet, StudentKind(teacher_model.prediction_type, w_dim), teacher_model.schedule,
                     lr=dmd.fake_lr or common.train.lr, max_grad_norm=common.train.max_grad_norm, head=head,
                     head_weight=dmd.gan_head_weight)
    # A G that takes w is fed the real-guidance scale, in training and (recorded below) in sampling; else none.
    baked = dmd.real_guidance if g_dim is not None else 1.0
    size = train_size(pipe, common)
    if steps == 1:
        # Trailing DDIM at one step (t = T − 1), as every step student; its final ᾱ is 1, so the step returns G's x0.
        scheduler = student_scheduler(pipe.scheduler, steps=1, prediction_type=student_type, set_alpha_to_one=True)
        scheduler.set_timesteps(1)
        grid = [int(scheduler.timesteps[0])]
    else:
        # LCMScheduler: predict x0, re-noise it to the next grid time with fresh noise. Its boundary scaling c_skip
        # is at most 2e-7 on these grids (t >= T/8 − 1), so what it returns is G's x0 to float precision.
        scheduler = lcm_scheduler(pipe.scheduler.config, num_ddim_timesteps=steps, prediction_type=student_type)
        grid = sampling_timesteps(scheduler, steps)
    loss = DMDLoss(real=Guided(teacher_model, w_dim), fake=fake, generator=StudentKind(student_type, g_dim),
                   schedule=teacher_model.schedule, latent_shape=latent_shape(pipe.unet.config, pipe.vae_scale_factor,
                                                                              size),
                   real_guidance=dmd.real_guidance, fake_updates=dmd.fake_updates, generator_scale=baked,
                   grid=tuple(grid), gan_weight=dmd.gan_weight)
    # The GAN term reads the shards' images (the loop's own batches: latents, captions); else captions only.
    data, val = None, None
    if not gan:
        batches, prepare, val = prompt_data(config, TextEmbeddings(pipe.tokenizer, pipe.text_encoder),
                                            seed=common.train.seed)
        data = (batches, prepare)
    record = StudentRecord(stage="distill-steps", num_inference_steps=steps, timesteps=grid,
                           mode="dmd", guidance_embedding=g_dim is not None, prediction_type=student_type,
                           student_arch=common.student_arch, guidance=baked)
    result = train_and_save(
        common=common, teacher=teacher, student_unet=generator, loss=loss, scheduler=scheduler, record=record,
        stage="distill-steps", config=resolved_config(config), resume_from=resume_from, teacher_steps=16,
        student_steps=steps, extra_module=fake.module, extra_optimizer=fake.optimizer,
        data=data, val_prompts=val, student_guidance=baked,
    )
    return finish(stage="distill-steps", common=common, config=resolved_config(config), teacher=teacher,
                  result=result, data_input=dmd.prompts)
