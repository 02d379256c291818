"""A model queried at guidance scale s, whichever way it takes guidance.

This is the seam where a guidance-distilled student replaces "teacher + CFG": a UNet with
`time_cond_proj_dim` is fed the embedding of w = s − 1 (one pass, as stock diffusers does), any other
UNet runs classifier-free guidance on the doubled batch [uncond; cond].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from snapdistill.diffusion import DiffusionModel, NoiseSchedule, Prediction, guidance_embedding, student_w


class Guided:
    """`DiffusionModel` + guidance: `guided(z, t, cond, uncond, s)` is the prediction at scale s [B]."""

    def __init__(self, model: DiffusionModel, w_dim: int | None):
        self.model = model
        self.w_dim = w_dim  # the UNet's time_cond_proj_dim (read before any DDP wrapping)

    @property
    def takes_w(self) -> bool:
        """True for a guidance-distilled model (one pass per step, w embedded)."""
        return self.w_dim is not None

    def __call__(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                 s: torch.Tensor) -> Prediction:
        if self.takes_w:
            w = guidance_embedding(student_w(s.float()), self.w_dim).to(device=z.device, dtype=z.dtype)
            return self.model.predict(z, t, cond, timestep_cond=w)
        if bool((s == 1).all()):  # s = 1 is the conditional model alone: skip the unconditional half
            return self.model.predict(z, t, cond)
        return self.model.predict_cfg(z, t, cond, uncond, s)


@dataclass(frozen=True)
class StudentKind:
    """How a loss reads the student UNet it is handed on each call: its prediction type and its w dim.

    The loss gets the module the training loop optimises (maybe DDP-wrapped) as an argument, so it holds no
    student itself; `on` wraps that module per call (two small objects, no copy).
    """

    prediction_type: str
    w_dim: int | None    # time_cond_proj_dim, read from the unwrapped UNet; None: the student runs CFG

    @property
    def takes_w(self) -> bool:
        return self.w_dim is not None

    def on(self, unet: torch.nn.Module, schedule: NoiseSchedule) -> Guided:
        """The student `unet` as a `Guided` model."""
        return Guided(DiffusionModel(unet, schedule, self.prediction_type), self.w_dim)
