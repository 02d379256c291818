"""A diffusers UNet seen through its prediction type: every call yields x0 and eps.

Losses use this wrapper and never branch on the prediction type: they read `pred.x0` / `pred.eps`,
or re-express a prediction in the parametrisation they regress (`pred.as_type("v_prediction")`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from snapdistill.diffusion.convert import Scalar, check_prediction_type, from_x0_eps, to_x0_eps
from snapdistill.diffusion.guidance import cfg
from snapdistill.diffusion.schedule import NoiseSchedule


@dataclass(frozen=True, eq=False)
class Prediction:
    """One denoising prediction at (α, σ): the raw model output and the x0 and eps it means."""

    x0: torch.Tensor
    eps: torch.Tensor
    output: torch.Tensor
    prediction_type: str
    alpha: Scalar
    sigma: Scalar

    @classmethod
    def from_output(
        cls, prediction_type: str, *, z: torch.Tensor, output: torch.Tensor, alpha: Scalar, sigma: Scalar
    ) -> Prediction:
        """The prediction that a raw `output` of `prediction_type` makes at z."""
        x0, eps = to_x0_eps(prediction_type, z=z, output=output, alpha=alpha, sigma=sigma)
        return cls(x0=x0, eps=eps, output=output, prediction_type=prediction_type, alpha=alpha, sigma=sigma)

    def as_type(self, prediction_type: str) -> torch.Tensor:
        """This prediction as the raw output of a model of `prediction_type`."""
        return from_x0_eps(prediction_type, x0=self.x0, eps=self.eps, alpha=self.alpha, sigma=self.sigma)


def _doubled(x: torch.Tensor | int | None) -> torch.Tensor | int | None:
    """[x; x] along the batch, for per-sample tensors; scalars and None pass through."""
    if isinstance(x, torch.Tensor) and x.ndim > 0:
        return torch.cat([x, x])
    return x


class DiffusionModel:
    """A UNet2DConditionModel (or any module with its call signature), its noise schedule and its
    prediction type. `predict` returns a `Prediction`, whatever the model predicts.

    Conversions run in at least float32: x0 from eps divides by α ≈ 0.068 at t = 999 of SD.
    """

    def __init__(self, unet: torch.nn.Module, schedule: NoiseSchedule, prediction_type: str):
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = check_prediction_type(prediction_type)

    @classmethod
    def from_pipeline(cls, pipe) -> DiffusionModel:
        """Wrap `pipe.unet`, with the schedule and prediction type of `pipe.scheduler.config`."""
        config = pipe.scheduler.config
        return cls(
            pipe.unet,
            NoiseSchedule.from_scheduler_config(config),
            config.get("prediction_type", "epsilon"),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.unet).__name__}, prediction_type={self.prediction_type!r}, "
            f"num_train_timesteps={self.schedule.num_train_timesteps})"
        )

    def raw_output(
        self,
        z: torch.Tensor,
        t: int | torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        *,
        timestep_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model's own output at (z, t), in its prediction type. Inputs are cast to the UNet's dtype: a frozen
        teacher kept in bf16/fp16 under mixed precision takes fp32 latents."""
        dtype = next(self.unet.parameters()).dtype
        if dtype != z.dtype and not torch.is_autocast_enabled(z.device.type):
            z, encoder_hidden_states = z.to(dtype), encoder_hidden_states.to(dtype)
            timestep_cond = None if timestep_cond is None else timestep_cond.to(dtype)
        return self.unet(
            z, t, encoder_hidden_states=encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False
        )[0]

    def prediction(self, z: torch.Tensor, t: int | torch.Tensor, output: torch.Tensor) -> Prediction:
        """The Prediction that a raw `output` of this model at (z, t) means."""
        dtype = torch.promote_types(output.dtype, torch.float32)
        z = z.to(dtype)
        output = output.to(dtype)
        alpha, sigma = self.schedule.alpha_sigma(t, dtype=dtype)
        alpha, sigma = alpha.to(z.device), sigma.to(z.device)
        return Prediction.from_output(self.prediction_type, z=z, output=output, alpha=alpha, sigma=sigma)

    def predict(
        self,
        z: torch.Tensor,
        t: int | torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        *,
        timestep_cond: torch.Tensor | None = None,
    ) -> Prediction:
        """One forward pass at (z, t) as x0, eps and the raw output."""
        output = self.raw_output(z, t, encoder_hidden_states, timestep_cond=timestep_cond)
        return self.prediction(z, t, output)

    def predict_cfg(
        self,
        z: torch.Tensor,
        t: int | torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        s: Scalar,
        *,
        timestep_cond: torch.Tensor | None = None,
    ) -> Prediction:
        """The guided prediction out_u + s·(out_c − out_u), from one forward on the batch [uncond; cond].

        `uncond` may have batch size 1 (one empty-prompt embedding for all); s is a float or [B].
        """
        uncond = uncond.expand_as(cond) if uncond.shape[0] == 1 else uncond
        output = self.raw_output(
            torch.cat([z, z]),
            _doubled(t),
            torch.cat([uncond, cond]),
            timestep_cond=_doubled(timestep_cond),
        )
        out_u, out_c = output.chunk(2)
        return self.prediction(z, t, cfg(eps_u=out_u, eps_c=out_c, s=s))
