import itertools

import pytest
import torch

from snapdistill.diffusion import (
    NoiseSchedule,
    ddim_step,
    eps_for_landing,
    eps_from_x0,
    to_x0_eps,
    v_for_landing,
    v_from_x0_eps,
    x0_for_landing,
    x0_from_eps,
)
from snapdistill.models.tiny import SD_SCHEDULER_CONFIG

SD = NoiseSchedule.from_scheduler_config(SD_SCHEDULER_CONFIG)


def _randn(seed, shape=(2, 4, 6, 6), dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("num_steps", [8, 16])
def test_ddim_step_matches_diffusers(prediction_type, spacing, num_steps):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        **dict(SD_SCHEDULER_CONFIG, timestep_spacing=spacing), prediction_type=prediction_type
    )
    scheduler.set_timesteps(num_steps)
    # With set_alpha_to_one=False the step past the grid lands on ᾱ_0.
    assert scheduler.final_alpha_cumprod == scheduler.alphas_cumprod[0]
    assert len(scheduler.timesteps) == num_steps
    for i, t in enumerate(scheduler.timesteps.tolist()):
        t_prev = t - 1000 // num_steps  # how DDIMScheduler.step finds the previous timestep
        z, output = _randn(2 * i), _randn(2 * i + 1)
        x0, eps = to_x0_eps(prediction_type, z=z, output=output, alpha=SD.alpha(t), sigma=SD.sigma(t))
        prev = max(t_prev, 0)
        ours = ddim_step(x0=x0, eps=eps, alpha_next=SD.alpha(prev), sigma_next=SD.sigma(prev))
        ref = scheduler.step(output, t, z, eta=0.0).prev_sample
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert t_prev < 0  # the loop ended with the final step


def test_ddim_step_from_exact_x0_and_eps():
    """From the true x0 and eps, one step gives the consistent noised point; to α=1, σ=0 it gives x0."""
    x0, eps = _randn(0, dtype=torch.float64), _randn(1, dtype=torch.float64)
    t = torch.tensor([999, 500])
    a, s = SD.alpha(t, torch.float64), SD.sigma(t, torch.float64)
    z = a[:, None, None, None] * x0 + s[:, None, None, None] * eps
    eps_hat = eps_from_x0(z=z, x0=x0, alpha=a, sigma=s)
    a2, s2 = SD.alpha(t - 250, torch.float64), SD.sigma(t - 250, torch.float64)
    torch.testing.assert_close(
        ddim_step(x0=x0, eps=eps_hat, alpha_next=a2, sigma_next=s2),
        a2[:, None, None, None] * x0 + s2[:, None, None, None] * eps,
        rtol=1e-12,
        atol=1e-12,
    )
    x0_hat = x0_from_eps(z=z, eps=eps, alpha=a, sigma=s)
    torch.testing.assert_close(
        ddim_step(x0=x0_hat, eps=eps, alpha_next=1.0, sigma_next=0.0), x0, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("t, t_next", [(999, 874), (874, 749), (249, 124), (124, 0), (500, 10)])
def test_landing_targets_land_on_z_next(t, t_next):
    z, z_next = _randn(3, dtype=torch.float64), _randn(4, dtype=torch.float64)
    a, s = SD.alpha(t, torch.float64), SD.sigma(t, torch.float64)
    a2, s2 = SD.alpha(t_next, torch.float64), SD.sigma(t_next, torch.float64)
    kw = dict(z=z, z_next=z_next, alpha=a, sigma=s, alpha_next=a2, sigma_next=s2)
    x0_t, eps_t, v_t = x0_for_landing(**kw), eps_for_landing(**kw), v_for_landing(**kw)
    step = dict(alpha_next=a2, sigma_next=s2)
    # The x0 target with the eps it implies at z, and the eps target with the x0 it implies.
    landed_x0 = ddim_step(x0=x0_t, eps=eps_from_x0(z=z, x0=x0_t, alpha=a, sigma=s), **step)
    landed_eps = ddim_step(x0=x0_from_eps(z=z, eps=eps_t, alpha=a, sigma=s), eps=eps_t, **step)
    torch.testing.assert_close(landed_x0, z_next, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(landed_eps, z_next, rtol=1e-9, atol=1e-9)
    # The two targets describe the same prediction, and so does the v target.
    torch.testing.assert_close(eps_t, eps_from_x0(z=z, x0=x0_t, alpha=a, sigma=s), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(v_t, v_from_x0_eps(x0=x0_t, eps=eps_t, alpha=a, sigma=s), rtol=0, atol=0)
    x0_v, eps_v = to_x0_eps("v_prediction", z=z, output=v_t, alpha=a, sigma=s)
    torch.testing.assert_close(ddim_step(x0=x0_v, eps=eps_v, **step), z_next, rtol=1e-9, atol=1e-9)


def test_landing_targets_per_sample():
    """[B] alphas broadcast: the batched targets equal the per-sample ones."""
    z, z_next = _randn(5), _randn(6)
    t, t_next = torch.tensor([999, 300]), torch.tensor([874, 200])
    kw = dict(alpha=SD.alpha(t), sigma=SD.sigma(t), alpha_next=SD.alpha(t_next), sigma_next=SD.sigma(t_next))
    batched = eps_for_landing(z=z, z_next=z_next, **kw)
    for i in range(2):
        one = eps_for_landing(z=z[i : i + 1], z_next=z_next[i : i + 1], **{k: v[i] for k, v in kw.items()})
        torch.testing.assert_close(batched[i : i + 1], one, rtol=0, atol=0)


def test_landing_target_error_gains_on_the_8_step_grid():
    """How much an error in the teacher's landing point z'' is amplified by each target.

    x̃ = (z'' − …)/(α'' − σ''α/σ) has gain 1/|α'' − σ''α/σ|; ẽ has gain 1/|σ'' − α''σ/α|.
    """
    grid = [999, 874, 749, 624, 499, 374, 249, 124, 0]
    gains_x0, gains_eps = [], []
    one = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    for t, t_next in itertools.pairwise(grid):
        kw = dict(
            z=0 * one,
            alpha=SD.alpha(t, torch.float64),
            sigma=SD.sigma(t, torch.float64),
            alpha_next=SD.alpha(t_next, torch.float64),
            sigma_next=SD.sigma(t_next, torch.float64),
        )
        gains_x0.append(x0_for_landing(z_next=one, **kw).abs().item())
        gains_eps.append(eps_for_landing(z_next=one, **kw).abs().item())
    assert gains_x0[0] == pytest.approx(14.7, abs=0.05)  # the first interval: ~15×
    assert max(gains_x0) == gains_x0[0]
    assert max(gains_eps) == pytest.approx(3.64, abs=0.01)  # at most ~3.6...
    assert gains_eps.index(max(gains_eps)) == 6  # ...on the interval 249 → 124, near the clean end
    assert gains_eps[0] == pytest.approx(1.01, abs=0.01)


def _fake_eps(z: torch.Tensor, t: int) -> torch.Tensor:
    """A deterministic stand-in model whose eps depends on the sample and the timestep."""
    return torch.tanh(0.7 * z + 0.001 * t) - 0.2 * z


def test_dpm_solver_pp_steps_match_diffusers_multistep_scheduler():
    """Our first-order start and 2M steps give what diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2,
    the sampler of every teacher row) gives on the same timesteps and model outputs."""
    from diffusers import DPMSolverMultistepScheduler

    from snapdistill.diffusion import dpm_solver_pp_step, step_h

    points = [999, 874, 749, 624, 499, 374]
    sched = DPMSolverMultistepScheduler.from_config(SD_SCHEDULER_CONFIG, solver_order=2, lower_order_final=False,
                                                     algorithm_type="dpmsolver++")
    sched.set_timesteps(timesteps=points)
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref, ours = [z0], [z0]
    x0_prev = h_prev = None
    for k, t in enumerate(points[:-1]):  # diffusers' last step (onto sigma 0) is not compared
        ref.append(sched.step(_fake_eps(ref[-1], t), t, ref[-1]).prev_sample)
        a, s = SD.alpha_sigma(torch.tensor([t]))
        a2, s2 = SD.alpha_sigma(torch.tensor([points[k + 1]]))
        z = ours[-1]
        x0 = (z - s.view(-1, 1, 1, 1) * _fake_eps(z, t)) / a.view(-1, 1, 1, 1)
        ours.append(dpm_solver_pp_step(z=z, x0=x0, alpha=a, sigma=s, alpha_next=a2, sigma_next=s2, x0_prev=x0_prev,
                                       h_prev=h_prev))
        x0_prev, h_prev = x0, step_h(alpha=a, sigma=s, alpha_next=a2, sigma_next=s2)
    for k in range(1, len(ours)):
        assert torch.allclose(ours[k], ref[k], atol=1e-4, rtol=1e-4), k
    # The second-order steps differ from DDIM's (so the check above could fail for a first-order step).
    a, s = SD.alpha_sigma(torch.tensor([points[1]]))
    a2, s2 = SD.alpha_sigma(torch.tensor([points[2]]))
    x0 = (ours[1] - s.view(-1, 1, 1, 1) * _fake_eps(ours[1], points[1])) / a.view(-1, 1, 1, 1)
    eps = _fake_eps(ours[1], points[1])
    assert not torch.allclose(ddim_step(x0=x0, eps=eps, alpha_next=a2, sigma_next=s2), ours[2], atol=1e-4)


def test_dpm_solver_pp_first_order_is_ddim_and_a_step_onto_sigma_zero_returns_x0():
    from snapdistill.diffusion import dpm_solver_pp_step

    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    a, s = SD.alpha_sigma(torch.tensor([900, 500, 300]))
    a2, s2 = SD.alpha_sigma(torch.tensor([700, 250, 100]))
    eps = (z - a.view(-1, 1, 1, 1) * x0) / s.view(-1, 1, 1, 1)
    first = dpm_solver_pp_step(z=z, x0=x0, alpha=a, sigma=s, alpha_next=a2, sigma_next=s2)
    assert torch.allclose(first, ddim_step(x0=x0, eps=eps, alpha_next=a2, sigma_next=s2), atol=1e-5)
    ones, zeros = torch.ones(3), torch.zeros(3)
    last = dpm_solver_pp_step(z=z, x0=x0, alpha=a, sigma=s, alpha_next=ones, sigma_next=zeros,
                              x0_prev=torch.zeros_like(x0), h_prev=torch.ones(3))
    assert torch.allclose(last, x0, atol=1e-6)
