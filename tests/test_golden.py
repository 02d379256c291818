"""Golden numbers: the losses and two optimisation steps of each stage, pinned on the tiny random pipeline.

They were obtained by running the code once. A change to the math must show up here: when a number moves,
say in the commit why it had to, and update only that number. Every setting that feeds the numbers is written
out (not left to a default), so a change of defaults does not move them.
"""

import pytest
import torch
from safetensors.torch import load_file

from snapdistill.diffusion import DiffusionModel, NoiseSchedule
from snapdistill.distill import guidance_stage, steps_stage
from snapdistill.distill.grid import final_alpha_cumprod, student_grid
from snapdistill.distill.guided import Guided, StudentKind
from snapdistill.distill.loop import TrainConfig
from snapdistill.distill.losses import Batch, GuidanceLoss, StepLoss
from snapdistill.distill.stage import CommonConfig
from snapdistill.distill.student import copy_student, guided_student
from snapdistill.models.tiny import SD_SCHEDULER_CONFIG, tiny_components

SCHEDULE = NoiseSchedule.from_scheduler_config(SD_SCHEDULER_CONFIG)
RTOL = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    """Reductions may sum in another order with more threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(latents=torch.randn(3, 4, 8, 8, generator=g), cond=torch.randn(3, 77, 32, generator=g),
                 uncond=torch.randn(1, 77, 32, generator=g))


def _teacher_unet():
    return tiny_components()["unet"]


def test_guidance_loss_per_sample():
    unet = _teacher_unet()
    student_unet = guided_student(unet, cond_dim=32)
    with torch.no_grad():  # a student that already uses w, so the w path counts
        student_unet.time_embedding.cond_proj.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(3))
    loss = GuidanceLoss(teacher=Guided(DiffusionModel(unet, SCHEDULE, "epsilon"), None),
                        student=StudentKind("epsilon", 32), schedule=SCHEDULE,
                        guidance_range=(2.0, 14.0), space="x0")
    with torch.no_grad():
        values = loss(student_unet, _batch(), torch.Generator().manual_seed(1))
    torch.testing.assert_close(values, torch.tensor([1.3985708951950073, 0.0015418203547596931, 0.04603808373212814]),
                               rtol=RTOL, atol=0)


@pytest.mark.parametrize("gamma, expected", [
    (0.0, [8.584785461425781, 0.06041562929749489, 0.7614401578903198]),
    # gamma's term is rescaled per sample to loss_i (was: to the batch mean), so its value is (1 + gamma)·loss_i.
    (0.5, [12.877178192138672, 0.09062344580888748, 1.142160177230835]),
])
def test_step_loss_per_sample(gamma, expected):
    unet = _teacher_unet()
    student_unet = copy_student(unet)
    with torch.no_grad():  # a student a little off its teacher, so the loss is not ~0
        for p in student_unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))
    loss = StepLoss(teacher=Guided(DiffusionModel(unet, SCHEDULE, "epsilon"), None),
                    student=StudentKind("epsilon", None), schedule=SCHEDULE,
                    grid=student_grid(SD_SCHEDULER_CONFIG, 4), substeps=2,
                    final_alpha_cumprod=final_alpha_cumprod(SD_SCHEDULER_CONFIG, SCHEDULE), cfg_prob=0.5,
                    cfg_range=(2.0, 14.0), space="x0", gamma=gamma)
    with torch.no_grad():
        values = loss(student_unet, _batch(), torch.Generator().manual_seed(2))
    torch.testing.assert_close(values, torch.tensor(expected), rtol=RTOL, atol=0)


def _common(teacher, shards, out) -> CommonConfig:
    train = TrainConfig(max_steps=2, batch_size=4, grad_accum=1, lr=1e-3, warmup_steps=1, weight_decay=0.0,
                        max_grad_norm=1.0, ema_decay=0, mixed_precision="no", checkpoint_every=0, validate_every=0,
                        seed=0)
    return CommonConfig(teacher=str(teacher), shards=shards, out=out, train=train, student_prediction="same",
                        student_arch="same", feat_weight=0.0, out_weight=1.0, caption_dropout=0.1, val_prompts=1)


def _weights(out, name: str) -> tuple[float, list[float]]:
    """(sum, first four entries) of one parameter tensor of the saved student."""
    tensor = load_file(out / "student" / "unet" / "diffusion_pytorch_model.safetensors")[name]
    return float(tensor.double().sum()), tensor.flatten()[:4].tolist()


def _check(found, expected) -> None:
    torch.testing.assert_close(torch.tensor([found[0], *found[1]], dtype=torch.float64),
                               torch.tensor([expected[0], *expected[1]], dtype=torch.float64), rtol=RTOL, atol=0)


def test_two_steps_of_distill_guidance(tmp_path, tiny_eps_dir, test_shards):
    out = tmp_path / "guided"
    guidance_stage.run(guidance_stage.GuidanceConfig(common=_common(tiny_eps_dir, test_shards, out),
                                                     guidance_range=(2.0, 14.0), cond_dim=32, loss_space="x0",
                                                     val_steps=2))
    _check(_weights(out, "conv_in.weight"), GUIDED_CONV_IN)
    _check(_weights(out, "time_embedding.cond_proj.weight"), GUIDED_COND_PROJ)


def test_two_steps_of_distill_steps(tmp_path, tiny_eps_dir, test_shards):
    out = tmp_path / "steps"
    steps_stage.run(steps_stage.StepsConfig(common=_common(tiny_eps_dir, test_shards, out), from_steps=4, to_steps=2,
                                            mode="direct", target_space="x0", cfg_prob=0.5, cfg_range=(2.0, 14.0),
                                            gamma=0.0, embed_guidance=False, teacher_substeps=1, teacher_solver="ddim"))
    _check(_weights(out, "conv_in.weight"), STEPS_CONV_IN)


# Student weights after two steps: (sum, first four entries) of a parameter tensor.
GUIDED_CONV_IN = (-2.024309472180903, [-0.0005674462299793959, 0.08743727207183838, -0.13531634211540222,
                                        -0.12129521369934082])
GUIDED_COND_PROJ = (-0.02637614938430488, [-0.0015414301306009293, 0.0004932372248731554, 0.0019893741700798273,
                                           -0.0009460742585361004])
STEPS_CONV_IN = (-2.0486769135459326, [-0.0029144336003810167, 0.08767896890640259, -0.1390167623758316,
                                       -0.12441512942314148])
