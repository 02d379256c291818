import pytest
import torch

from snapdistill.diffusion import NoiseSchedule, alpha_sigma_at
from snapdistill.distill.grid import FINAL, final_alpha_cumprod, student_grid, teacher_points
from snapdistill.errors import SnapdistillError
from snapdistill.models.tiny import SD_SCHEDULER_CONFIG


def test_student_grid_is_what_the_ddim_sampler_visits():
    """Record the timesteps a trailing-DDIM sampler calls the model at; they equal the training grid."""
    from diffusers import DDIMScheduler

    for steps in (1, 2, 4, 8):
        sched = DDIMScheduler.from_config(SD_SCHEDULER_CONFIG, timestep_spacing="trailing")
        sched.set_timesteps(steps)
        z, seen = torch.zeros(1, 1), []
        for t in sched.timesteps:
            seen.append(int(t))
            z = sched.step(torch.zeros_like(z), t, z).prev_sample
        assert student_grid(SD_SCHEDULER_CONFIG, steps) == [*seen, FINAL]
    assert student_grid(SD_SCHEDULER_CONFIG, 8) == [999, 874, 749, 624, 499, 374, 249, 124, FINAL]


def test_sixteen_steps_do_not_chain_on_sd_schedule():
    with pytest.raises(SnapdistillError, match="divides 1000"):
        student_grid(SD_SCHEDULER_CONFIG, 16)


def test_teacher_points_split_each_student_interval():
    assert teacher_points(999, 874, 2) == [999, 936, 874]
    assert teacher_points(124, FINAL, 2) == [124, 61, FINAL]
    assert teacher_points(999, 749, 4) == [999, 936, 874, 811, 749]
    assert teacher_points(999, 874, 1) == [999, 874]


def test_final_alpha_matches_ddim():
    from diffusers import DDIMScheduler

    schedule = NoiseSchedule.from_scheduler_config(SD_SCHEDULER_CONFIG)
    final = final_alpha_cumprod(SD_SCHEDULER_CONFIG, schedule)
    assert final == pytest.approx(float(DDIMScheduler.from_config(SD_SCHEDULER_CONFIG).final_alpha_cumprod))
    a, s = alpha_sigma_at(schedule, final, torch.tensor([FINAL, 999]))
    assert a[0] ** 2 == pytest.approx(final, rel=1e-6) and a[1] ** 2 == pytest.approx(0.0047, abs=2e-4)
    assert torch.allclose(a**2 + s**2, torch.ones(2))


def test_student_scheduler_of_a_dpm_teacher_is_trailing_ddim_without_clipping():
    """A DPM-Solver teacher config has no clip_sample: the student's DDIM must not default to clipping latents."""
    from diffusers import DPMSolverMultistepScheduler

    from snapdistill.distill.student import student_scheduler
    from snapdistill.models.tiny import SD_SCHEDULER_CONFIG

    teacher = DPMSolverMultistepScheduler(
        **{k: v for k, v in SD_SCHEDULER_CONFIG.items() if k not in ("clip_sample", "set_alpha_to_one")})
    sched = student_scheduler(teacher, steps=8, prediction_type="v_prediction")
    assert type(sched).__name__ == "DDIMScheduler"
    assert (sched.config.clip_sample, sched.config.timestep_spacing, sched.config.prediction_type) == (
        False, "trailing", "v_prediction")
    same = student_scheduler(teacher, steps=None, prediction_type="epsilon")
    assert type(same) is DPMSolverMultistepScheduler
