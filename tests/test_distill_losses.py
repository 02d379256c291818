"""Targets and losses of the distillation stages, on tiny random SD-architecture UNets."""

import pytest
import torch

from snapdistill.diffusion import DiffusionModel, NoiseSchedule, eps_from_v
from snapdistill.distill.grid import final_alpha_cumprod, student_grid
from snapdistill.distill.guided import Guided, StudentKind
from snapdistill.distill.losses import Batch, GuidanceLoss, StepLoss, space_mse
from snapdistill.distill.student import copy_student, guided_student
from snapdistill.models.tiny import SD_SCHEDULER_CONFIG, tiny_components

SCHEDULE = NoiseSchedule.from_scheduler_config(SD_SCHEDULER_CONFIG)
FINAL = final_alpha_cumprod(SD_SCHEDULER_CONFIG, SCHEDULE)


def _batch(n=3, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(latents=torch.randn(n, 4, 8, 8, generator=g), cond=torch.randn(n, 77, dim, generator=g),
                 uncond=torch.randn(1, 77, dim, generator=g))


def _step_loss(teacher: Guided, student: StudentKind, **kw):
    kw = {"grid": student_grid(SD_SCHEDULER_CONFIG, 4), "substeps": 2, "final_alpha_cumprod": FINAL, **kw}
    return StepLoss(teacher=teacher, student=student, schedule=SCHEDULE, **kw)


class EpsFromV(torch.nn.Module):
    """An epsilon model defined as the conversion of a v model's output (same function, other type)."""

    def __init__(self, v_unet):
        super().__init__()
        self.v_unet = v_unet
        self.config = v_unet.config

    def forward(self, z, t, encoder_hidden_states, timestep_cond=None, return_dict=False):
        v = self.v_unet(z, t, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        alpha, sigma = SCHEDULE.alpha_sigma(t.expand(z.shape[0]) if t.ndim == 0 else t)
        return (eps_from_v(z=z, v=v, alpha=alpha, sigma=sigma),)


@pytest.mark.parametrize("space", ["x0", "eps", "v"])
def test_v_teacher_targets_equal_the_epsilon_path(space):
    """One distillation step with a v teacher: finite targets, equal to the eps teacher's (to 1e-5)."""
    v_unet = tiny_components(prediction_type="v_prediction")["unet"]
    v_teacher = Guided(DiffusionModel(v_unet, SCHEDULE, "v_prediction"), None)
    eps_teacher = Guided(DiffusionModel(EpsFromV(v_unet), SCHEDULE, "epsilon"), None)
    batch, s = _batch(), torch.tensor([1.0, 7.5, 3.0])
    t, t_next = torch.tensor([999, 749, 249]), torch.tensor([749, 499, -1])
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    loss_v = _step_loss(v_teacher, StudentKind("v_prediction", None), space=space)
    loss_e = _step_loss(eps_teacher, StudentKind("epsilon", None), space=space)
    with torch.no_grad():
        land_v = loss_v.teacher_landing(z, t, t_next, batch, s)
        land_e = loss_e.teacher_landing(z, t, t_next, batch, s)
        assert torch.isfinite(land_v).all()
        torch.testing.assert_close(land_v, land_e, atol=1e-5, rtol=1e-5)
        values = [fn(unet, batch, torch.Generator().manual_seed(2))
                  for fn, unet in ((loss_v, v_unet), (loss_e, EpsFromV(v_unet)))]
    assert all(torch.isfinite(v).all() for v in values)
    torch.testing.assert_close(values[0], values[1], atol=1e-5, rtol=1e-4)


def test_a_student_equal_to_its_one_step_teacher_has_zero_loss():
    unet = tiny_components()["unet"]
    teacher = Guided(DiffusionModel(unet, SCHEDULE, "epsilon"), None)
    student, student_unet = StudentKind("epsilon", None), copy_student(unet)
    for cfg_prob in (0.0, 1.0):
        loss = _step_loss(teacher, student, substeps=1, cfg_prob=cfg_prob)
        with torch.no_grad():
            assert loss(student_unet, _batch(), torch.Generator().manual_seed(0)).abs().max() < 1e-6
    # Two teacher steps are not one: the same student now has something to learn.
    with torch.no_grad():
        loss = _step_loss(teacher, student, substeps=2)
        assert loss(student_unet, _batch(), torch.Generator().manual_seed(0)).max() > 1e-6


def test_guided_student_starts_as_the_conditional_teacher():
    unet = tiny_components()["unet"]
    student_unet = guided_student(unet, cond_dim=32)
    teacher = Guided(DiffusionModel(unet, SCHEDULE, "epsilon"), None)
    loss = GuidanceLoss(teacher=teacher, student=StudentKind("epsilon", 32), schedule=SCHEDULE,
                        guidance_range=(1.0, 1.0))
    with torch.no_grad():
        assert loss(student_unet, _batch(), torch.Generator().manual_seed(0)).abs().max() < 1e-6
        # At s > 1 the teacher's CFG output differs from its conditional branch: a real target.
        loss.guidance_range = (7.5, 7.5)
        assert loss(student_unet, _batch(), torch.Generator().manual_seed(0)).min() > 1e-6


def test_loss_spaces_weigh_errors_by_snr():
    from snapdistill.diffusion import Prediction

    alpha, sigma = SCHEDULE.alpha_sigma(torch.tensor([100, 500, 950]))
    snr = SCHEDULE.snr(torch.tensor([100, 500, 950]))
    z, x0, x0_hat = (torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    eps = (z - alpha.view(-1, 1, 1, 1) * x0) / sigma.view(-1, 1, 1, 1)
    truth = Prediction.from_output("sample", z=z, output=x0, alpha=alpha, sigma=sigma)
    pred = Prediction.from_output("sample", z=z, output=x0_hat, alpha=alpha, sigma=sigma)
    x0_mse = ((x0_hat - x0) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(space_mse("x0", pred, x0, snr), x0_mse * snr.clamp(min=1))
    torch.testing.assert_close(space_mse("eps", pred, eps, snr), x0_mse * snr, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(space_mse("v", pred, truth.as_type("v_prediction"), snr), x0_mse * (1 + snr),
                               rtol=1e-4, atol=1e-6)


def test_teacher_substeps_split_each_teacher_step():
    """round_loss N -> M with R substeps: (N/M)·R teacher DDIM calls per landing, on points that include the
    teacher's own N-step grid; R = 1 is the teacher's N-step trajectory."""
    from snapdistill.distill.grid import teacher_points
    from snapdistill.distill.steps_stage import round_loss

    unet = tiny_components()["unet"]
    teacher = Guided(DiffusionModel(unet, SCHEDULE, "epsilon"), None)
    own = round_loss(teacher, StudentKind("epsilon", None), SD_SCHEDULER_CONFIG, 16, 8)
    fine = round_loss(teacher, StudentKind("epsilon", None), SD_SCHEDULER_CONFIG, 16, 8, 2)
    assert (own.substeps, fine.substeps) == (2, 4) and own.grid == fine.grid
    coarse_points, fine_points = teacher_points(999, 874, 2), teacher_points(999, 874, 4)
    assert set(coarse_points) <= set(fine_points) and len(fine_points) == 5


def test_dpm_solver_landing_is_ddim_for_one_substep_and_the_2m_chain_for_more():
    """--teacher-solver dpmsolver++: the landing's first substep is the DDIM step, each later one the 2M step on
    the landing's own history (dpm_solver_pp_step, itself checked against diffusers in test_ddim.py)."""
    from snapdistill.diffusion import alpha_sigma_at, dpm_solver_pp_step, step_h
    from snapdistill.distill.grid import teacher_points

    torch.manual_seed(0)
    teacher = Guided(DiffusionModel(tiny_components()["unet"].eval(), SCHEDULE, "epsilon"), None)
    student = StudentKind("epsilon", None)
    batch = _batch()
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t, t_next, s = torch.tensor([999, 749, 499]), torch.tensor([749, 499, 249]), torch.full((3,), 4.0)
    ddim1 = _step_loss(teacher, student, substeps=1).teacher_landing(z, t, t_next, batch, s)
    dpm1 = _step_loss(teacher, student, substeps=1, solver="dpmsolver++").teacher_landing(z, t, t_next, batch, s)
    assert torch.allclose(ddim1, dpm1, atol=1e-5)

    dpm3 = _step_loss(teacher, student, substeps=3, solver="dpmsolver++").teacher_landing(z, t, t_next, batch, s)
    points = torch.tensor([teacher_points(a, b, 3) for a, b in zip(t.tolist(), t_next.tolist())])
    zk, x0_prev, h_prev = z, None, None
    with torch.no_grad():
        for k in range(3):
            pred = teacher(zk, points[:, k], batch.cond, batch.uncond, s)
            a, sg = alpha_sigma_at(SCHEDULE, FINAL, points[:, k])
            a2, s2 = alpha_sigma_at(SCHEDULE, FINAL, points[:, k + 1])
            zk = dpm_solver_pp_step(z=zk, x0=pred.x0, alpha=a, sigma=sg, alpha_next=a2, sigma_next=s2,
                                    x0_prev=x0_prev, h_prev=h_prev)
            x0_prev, h_prev = pred.x0, step_h(alpha=a, sigma=sg, alpha_next=a2, sigma_next=s2)
    assert torch.allclose(dpm3, zk, atol=1e-5)
    ddim3 = _step_loss(teacher, student, substeps=3).teacher_landing(z, t, t_next, batch, s)
    assert (dpm3 - ddim3).abs().max() > 1e-3


def test_an_unknown_teacher_solver_is_refused(cli, tmp_path, test_shards):
    code, _, err = cli("distill-steps", "--teacher", "toy", "--shards", test_shards, "--teacher-solver", "heun",
                       "--out", tmp_path / "x")
    assert code == 2 and err.strip() == "error: unknown --teacher-solver 'heun'; choose one of ddim, dpmsolver++"
