"""Golden numbers: the losses and two optimisation steps of each stage, pinned on the tiny random pipeline.

They were obtained by running the code once (AMD EPYC, AVX-512, 1 thread). A change to the maths must show up
here: when a number moves, say in the commit why it had to, and update only that number. Every setting that
feeds the numbers is written out (not left to a default), so a change of defaults does not move them.

Tolerances come from a measured spread, not from a guess. Other CPUs run other kernels (AVX2 or AVX-512 paths of
ATen, oneDNN and MKL, other reduction orders with more threads), and their floats differ in the last bits; two
Adam steps then magnify that in a weight whose gradient is nearly zero. `make spread` runs these tests under
ATEN_CPU_CAPABILITY (with oneDNN's and MKL's caps set to match) = default, avx2 and avx512, at 1 and 2 threads,
and prints the largest difference seen per check; each tolerance below is about ten times that figure (written
beside it). Losses are compared per entry, updates relative to the check's largest entry (`spread.rel_diff`).

A tolerance must not grow until it hides a change of the maths: `test_a_broken_loss_or_schedule_fails_*` break
the loss by one term (CFG without its eps_u term) and the schedule by one timestep (ᾱ read one step later), and
require every golden check to fail by a wide margin.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from spread import assert_rel_close, rel_diff

from snapdistill.diffusion import NoiseSchedule
from snapdistill.diffusion import guidance as guidance_maths
from snapdistill.diffusion.teacher import DiffusionModel
from snapdistill.distill import guidance_stage, steps_stage
from snapdistill.distill.grid import final_alpha_cumprod, student_grid
from snapdistill.distill.guided import Guided, StudentKind
from snapdistill.distill.loop import TrainConfig
from snapdistill.distill.losses import Batch, GuidanceLoss, StepLoss
from snapdistill.distill.stage import CommonConfig
from snapdistill.distill.steps_config import StepsConfig
from snapdistill.distill.student import copy_student, guided_student
from snapdistill.models.tiny import SD_SCHEDULER_CONFIG, tiny_components

pytestmark = pytest.mark.kernels
SCHEDULE = NoiseSchedule.from_scheduler_config(SD_SCHEDULER_CONFIG)

# Per-sample losses of one forward pass. Largest spread measured: 7.1e-6 (the guidance loss, ISA default).
LOSS_RTOL = 1e-4
# Two training steps: the losses logged at steps 1 and 2 (largest spread measured 3.7e-5, distill-steps, ISA
# default), and per tensor the update (trained − starting weights; largest spread 6.9e-4 of the update's largest
# entry, distill-steps' conv_in sum and norm, ISA default): Adam's steps are lr·m/(sqrt(v) + eps), and a weight
# whose gradient is near eps amplifies the last bits of its gradient.
TRAIN_LOSS_RTOL = 4e-4
UPDATE_RTOL = 7e-3
# Each break must move every check by at least this many tolerances.
BREAK_MARGIN = 10

GUIDANCE_LOSS = [1.3985708951950073, 0.0015418203547596931, 0.04603808373212814]
# (gamma, cfg_prob) -> per-sample loss. With seed 2 and cfg_prob 0.5 the batch is not CFG-aware (s = 1); cfg_prob 1
# takes the CFG-aware path.
STEP_LOSS = {
    (0.0, 0.5): [8.584785461425781, 0.06041562929749489, 0.7614401578903198],
    # gamma's term is rescaled per sample to loss_i (was: to the batch mean), so its value is (1 + gamma)·loss_i.
    (0.5, 0.5): [12.877178192138672, 0.09062344580888748, 1.142160177230835],
    (0.0, 1.0): [16.512054443359375, 0.06220456212759018, 2.0341591835021973],
}
# After two steps: the logged losses; per tensor, the first six entries of its update and the update's (sum, norm).
GUIDED = {
    "losses": [1.6446419954299927, 9.498273849487305],
    "conv_in.weight": {
        "first": [0.0006803572177886963, -0.0019699931144714355, 0.001857846975326538, 0.0013612955808639526,
                  0.001220017671585083, 0.001956608146429062],
        "sum_norm": [-0.010431048685859423, 0.05308428120070055]},
    "time_embedding.cond_proj.weight": {
        "first": [-0.0015414301306009293, 0.0004932372248731554, 0.0019893741700798273, -0.0009460742585361004,
                  0.0007996305357664824, 0.0019936386961489916],
        "sum_norm": [-0.02637614938430488, 0.051132550720561]},
}
STEPS = {
    "losses": [0.010314663872122765, 6.493515491485596],
    "conv_in.weight": {
        "first": [-0.0016666301526129246, -0.0017282962799072266, -0.0018425732851028442, -0.0017586201429367065,
                  -0.0018448084592819214, -0.0011928863823413849],
        "sum_norm": [-0.034798490050889086, 0.053730296939098844]},
}


def _batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(latents=torch.randn(3, 4, 8, 8, generator=g), cond=torch.randn(3, 77, 32, generator=g),
                 uncond=torch.randn(1, 77, 32, generator=g))


def _teacher_unet():
    return tiny_components()["unet"]


def guidance_loss_values() -> torch.Tensor:
    unet = _teacher_unet()
    student_unet = guided_student(unet, cond_dim=32)
    with torch.no_grad():  # a student that already uses w, so the w path counts
        student_unet.time_embedding.cond_proj.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(3))
    loss = GuidanceLoss(teacher=Guided(DiffusionModel(unet, SCHEDULE, "epsilon"), None),
                        student=StudentKind("epsilon", 32), schedule=SCHEDULE,
                        guidance_range=(2.0, 14.0), space="x0")
    with torch.no_grad():
        return loss(student_unet, _batch(), torch.Generator().manual_seed(1))


def step_loss_values(gamma: float, cfg_prob: float) -> torch.Tensor:
    unet = _teacher_unet()
    student_unet = copy_student(unet)
    with torch.no_grad():  # a student a little off its teacher, so the loss is not ~0
        for p in student_unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))
    loss = StepLoss(teacher=Guided(DiffusionModel(unet, SCHEDULE, "epsilon"), None),
                    student=StudentKind("epsilon", None), schedule=SCHEDULE,
                    grid=student_grid(SD_SCHEDULER_CONFIG, 4), substeps=2,
                    final_alpha_cumprod=final_alpha_cumprod(SD_SCHEDULER_CONFIG, SCHEDULE), cfg_prob=cfg_prob,
                    cfg_range=(2.0, 14.0), space="x0", gamma=gamma)
    with torch.no_grad():
        return loss(student_unet, _batch(), torch.Generator().manual_seed(2))


def _common(teacher, shards, out) -> CommonConfig:
    train = TrainConfig(max_steps=2, batch_size=4, grad_accum=1, lr=1e-3, warmup_steps=1, weight_decay=0.0,
                        max_grad_norm=1.0, ema_decay=0, mixed_precision="no", checkpoint_every=0, validate_every=0,
                        seed=0)
    return CommonConfig(teacher=str(teacher), shards=shards, out=out, train=train, student_prediction="same",
                        student_arch="same", feat_weight=0.0, out_weight=1.0, caption_dropout=0.1, val_prompts=1)


def _unet_weights(folder) -> dict:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def _trained(out, teacher_dir, names: tuple[str, ...]) -> dict:
    """What two steps left: the logged losses, and per tensor the first six entries of its update (trained −
    starting weights; a tensor the teacher lacks starts at zero) and the update's (sum, norm)."""
    start, end = _unet_weights(teacher_dir), _unet_weights(out / "student")
    found = {"losses": [json.loads(line)["loss"] for line in (out / "stats.jsonl").read_text().splitlines()]}
    for name in names:
        update = (end[name].double() - (start[name].double() if name in start else 0)).flatten()
        found[name] = {"first": update[:6].tolist(), "sum_norm": [update.sum().item(), update.norm().item()]}
    return found


def two_steps_of_distill_guidance(teacher_dir, shards, out) -> dict:
    guidance_stage.run(guidance_stage.GuidanceConfig(common=_common(teacher_dir, shards, out),
                                                     guidance_range=(2.0, 14.0), cond_dim=32, loss_space="x0",
                                                     val_steps=2))
    return _trained(out, teacher_dir, ("conv_in.weight", "time_embedding.cond_proj.weight"))


def two_steps_of_distill_steps(teacher_dir, shards, out) -> dict:
    steps_stage.run(StepsConfig(common=_common(teacher_dir, shards, out), from_steps=4, to_steps=2,
                                mode="direct", target_space="x0", cfg_prob=0.5, cfg_range=(2.0, 14.0), gamma=0.0,
                                embed_guidance=False, teacher_substeps=1, teacher_solver="ddim"))
    return _trained(out, teacher_dir, ("conv_in.weight",))


def _check_trained(label: str, found: dict, expected: dict) -> None:
    """Every check is made (and recorded for `make spread`) before the first failure is raised."""
    checks = [(f"{label} losses", found["losses"], expected["losses"], TRAIN_LOSS_RTOL, True)]
    checks += [(f"{label} {name} update {part}", found[name][part], expected[name][part], UPDATE_RTOL, False)
               for name in expected if name != "losses" for part in ("first", "sum_norm")]
    failed = []
    for name, f, e, rtol, per_entry in checks:
        try:
            assert_rel_close(name, f, e, rtol, per_entry=per_entry)
        except AssertionError as error:
            failed.append(str(error))
    assert not failed, "\n".join(failed)


def test_guidance_loss_per_sample():
    assert_rel_close("guidance loss", guidance_loss_values(), GUIDANCE_LOSS, LOSS_RTOL, per_entry=True)


@pytest.mark.parametrize("gamma, cfg_prob", sorted(STEP_LOSS))
def test_step_loss_per_sample(gamma, cfg_prob):
    assert_rel_close(f"step loss gamma={gamma} cfg_prob={cfg_prob}", step_loss_values(gamma, cfg_prob),
                     STEP_LOSS[gamma, cfg_prob], LOSS_RTOL, per_entry=True)


def test_two_steps_of_distill_guidance(tmp_path, tiny_eps_dir, test_shards):
    _check_trained("distill-guidance", two_steps_of_distill_guidance(tiny_eps_dir, test_shards, tmp_path / "g"),
                   GUIDED)


def test_two_steps_of_distill_steps(tmp_path, tiny_eps_dir, test_shards):
    _check_trained("distill-steps", two_steps_of_distill_steps(tiny_eps_dir, test_shards, tmp_path / "s"), STEPS)


# The breaks: CFG without its eps_u term (eps_u + s·(eps_c − eps_u) -> s·(eps_c − eps_u)), and every ᾱ_t read at t + 1.
def _cfg_without_eps_u(*, eps_u, eps_c, s):
    return guidance_maths.per_sample(s, eps_u) * (eps_c - eps_u)


def _alphas_cumprod_one_step_late(self, t):
    last = len(self.alphas_cumprod) - 1
    if isinstance(t, torch.Tensor):
        return self.alphas_cumprod.to(t.device)[(t.long() + 1).clamp(max=last)]
    return self.alphas_cumprod[min(int(t) + 1, last)]


BREAKS = {
    "loss": lambda mp: [mp.setattr(m, "cfg", _cfg_without_eps_u) for m in _cfg_users()],
    "schedule": lambda mp: mp.setattr(NoiseSchedule, "alphas_cumprod_at", _alphas_cumprod_one_step_late),
}


def _cfg_users():
    """Every module that calls `cfg` by a name of its own."""
    import sys

    return [m for name, m in list(sys.modules.items()) if name.startswith("snapdistill")
            and getattr(m, "cfg", None) is guidance_maths.cfg]


def _moved(found, expected, rtol: float, per_entry: bool) -> float:
    """How many tolerances the break moved a check by."""
    return rel_diff(found, expected, per_entry=per_entry) / rtol


@pytest.mark.parametrize("broken", sorted(BREAKS))
def test_a_broken_loss_or_schedule_fails_the_loss_goldens(broken, monkeypatch):
    BREAKS[broken](monkeypatch)
    moved = {"guidance": _moved(guidance_loss_values(), GUIDANCE_LOSS, LOSS_RTOL, True),
             **{f"step {k}": _moved(step_loss_values(*k), STEP_LOSS[k], LOSS_RTOL, True) for k in STEP_LOSS}}
    # Every check whose path the break touches fails: all read the schedule; CFG runs where s != 1 (the guidance
    # loss and the CFG-aware step loss; the other two step losses are at s = 1).
    touched = moved if broken == "schedule" else {k: moved[k] for k in ("guidance", "step (0.0, 1.0)")}
    assert min(touched.values()) > BREAK_MARGIN, moved


@pytest.mark.parametrize("broken", sorted(BREAKS))
def test_a_broken_loss_or_schedule_fails_the_training_goldens(broken, monkeypatch, tmp_path, tiny_eps_dir,
                                                              test_shards):
    BREAKS[broken](monkeypatch)
    for label, fn, expected in (("guidance", two_steps_of_distill_guidance, GUIDED),
                                ("steps", two_steps_of_distill_steps, STEPS)):
        found = fn(tiny_eps_dir, test_shards, tmp_path / label)
        moved = {"losses": _moved(found["losses"], expected["losses"], TRAIN_LOSS_RTOL, True)}
        moved.update({f"{name} {part}": _moved(found[name][part], expected[name][part], UPDATE_RTOL, False)
                      for name in expected if name != "losses" for part in ("first", "sum_norm")})
        # The logged losses carry the maths: the updates after two Adam steps hardly follow a change of the loss
        # (the first step is lr·sign(gradient)); measured, the one-timestep schedule break moves them by about
        # one UPDATE_RTOL. They pin the optimiser, the learning-rate schedule and the data order instead.
        assert moved["losses"] > BREAK_MARGIN, (label, moved)
