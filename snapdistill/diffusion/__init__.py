"""The pure diffusion core: schedule, prediction-type conversions, DDIM, guidance, model wrapper."""

from snapdistill.diffusion.convert import (
    PREDICTION_TYPES,
    check_prediction_type,
    eps_from_v,
    eps_from_x0,
    from_x0_eps,
    per_sample,
    to_x0_eps,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from snapdistill.diffusion.ddim import (
    ddim_step,
    dpm_solver_pp_step,
    eps_for_landing,
    step_h,
    v_for_landing,
    x0_for_landing,
)
from snapdistill.diffusion.guidance import cfg, guidance_embedding, student_w
from snapdistill.diffusion.schedule import NoiseSchedule, alpha_sigma_at, noisy
from snapdistill.diffusion.teacher import DiffusionModel, Prediction

__all__ = [
    "PREDICTION_TYPES",
    "DiffusionModel",
    "NoiseSchedule",
    "Prediction",
    "alpha_sigma_at",
    "cfg",
    "check_prediction_type",
    "ddim_step",
    "dpm_solver_pp_step",
    "eps_for_landing",
    "step_h",
    "eps_from_v",
    "eps_from_x0",
    "from_x0_eps",
    "guidance_embedding",
    "noisy",
    "per_sample",
    "student_w",
    "to_x0_eps",
    "v_for_landing",
    "v_from_x0_eps",
    "x0_for_landing",
    "x0_from_eps",
    "x0_from_v",
]
