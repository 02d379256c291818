import pytest
import torch

from snapdistill.diffusion import NoiseSchedule
from snapdistill.errors import SnapdistillError
from snapdistill.models.tiny import SD_SCHEDULER_CONFIG


@pytest.fixture(scope="module")
def sd():
    return NoiseSchedule.from_scheduler_config(SD_SCHEDULER_CONFIG)


def test_scaled_linear_matches_closed_form_and_diffusers(sd):
    from diffusers import DDIMScheduler

    assert sd.num_train_timesteps == 1000
    assert sd.alphas_cumprod.dtype == torch.float64
    betas32 = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    # diffusers computes in float32: the same closed form in float32 matches bit for bit...
    assert torch.equal(sd.alphas_cumprod, torch.cumprod(1 - betas32, 0).double())
    # ...and the float64 closed form to float32 precision.
    betas64 = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(sd.alphas_cumprod, torch.cumprod(1 - betas64, 0), rtol=1e-5, atol=0)
    assert torch.equal(sd.alphas_cumprod, DDIMScheduler(**SD_SCHEDULER_CONFIG).alphas_cumprod.double())
    assert sd.alphas_cumprod[999].item() == pytest.approx(0.0047, abs=5e-5)
    assert sd.alphas_cumprod[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)


def test_accepts_frozen_scheduler_config_and_zero_snr():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG, rescale_betas_zero_snr=True)
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    assert torch.equal(schedule.alphas_cumprod, scheduler.alphas_cumprod.double())
    assert schedule.alpha(999).item() == 0.0
    assert schedule.sigma(999).item() == 1.0
    assert schedule.logsnr(999).item() == -float("inf")


def test_alpha_sigma_snr_logsnr(sd):
    t = torch.arange(1000)
    alpha, sigma = sd.alpha_sigma(t)
    assert alpha.dtype == sigma.dtype == torch.float32 and alpha.shape == (1000,)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(1000), rtol=0, atol=1e-6)
    a64, s64 = sd.alpha(t, torch.float64), sd.sigma(t, torch.float64)
    torch.testing.assert_close(a64**2 + s64**2, torch.ones(1000, dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(sd.snr(t, torch.float64), a64**2 / s64**2)
    torch.testing.assert_close(sd.logsnr(t, torch.float64), torch.log(a64**2 / s64**2))
    assert (sd.logsnr(t).diff() < 0).all()
    # An int timestep gives a 0-d tensor equal to the batched value.
    assert sd.alpha(999).shape == () and sd.alpha(999) == alpha[999]
    assert sd.snr(999).item() == pytest.approx(0.0047 / (1 - 0.0047), rel=1e-2)


def test_unknown_beta_schedule_is_a_known_error():
    with pytest.raises(SnapdistillError, match="unsupported scheduler config: wiggly"):
        NoiseSchedule.from_scheduler_config(dict(SD_SCHEDULER_CONFIG, beta_schedule="wiggly"))


def test_rejects_non_vector_alphas_cumprod():
    with pytest.raises(ValueError, match="1-D"):
        NoiseSchedule(alphas_cumprod=torch.ones(2, 3))
