"""What `sample` is asked to do: the settings every sampling path (the stage, `inspect`, the bench) reads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from snapdistill.errors import SnapdistillError


@dataclass
class SampleConfig:
    """Everything `sample` needs; the CLI fills it and `run` resolves the defaults."""

    model: str                                   # teacher name, pipeline folder or checkpoint file
    out: Path                                    # output folder
    source: dict = field(default_factory=dict)   # how the prompts were chosen (for the manifest)
    steps: int | None = None                     # None: the student's recorded count, else 20
    guidance: float | None = None                # CFG scale s (a guided student is fed w = s - 1); None: the
    #                                              student's recorded scale (a dmd generator's 1), else 7.5
    size: int | None = None                      # None: 512, or the model's native size when smaller
    scheduler: str | None = None                 # None: the student's own, else dpmsolver++
    spacing: str = "trailing"                    # timestep spacing of a named scheduler
    negative_prompt: str | None = None
    seed: int = 0                                # image of prompt index i gets seed + i
    batch_size: int = 8
    dtype: str = "fp32"
    device: str | None = None                    # None: cuda when available, else cpu
    allow_download: bool = False
    overwrite: bool = False                      # replace images made with other settings or another model
    allow_off_grid: bool = False                 # let --steps/--scheduler leave a step-distilled student's grid
    decoder: Path | None = None                  # a distill-decoder OUT/decoder folder used instead of the model's VAE
    channels_last: bool = False                  # UNet and decoder in channels-last memory format (speedups.py)
    compile: bool = False                        # torch.compile the UNet and the decoder (speedups.py)

    def check(self) -> None:
        """Refuse impossible numbers with one line, before prompts are read or the model loads."""
        for flag, value in (("--steps", self.steps), ("--batch-size", self.batch_size), ("--size", self.size),
                            ("--limit", self.source.get("limit")), ("--toy-val", self.source.get("toy_val"))):
            if value is not None and value < 1:
                raise SnapdistillError(f"{flag} must be a positive integer, got {value}")
        # Any finite scale is a valid input to diffusers (s <= 1 means no guidance); nan or inf would give nan images.
        if self.guidance is not None and (not math.isfinite(self.guidance) or self.guidance < 0):
            raise SnapdistillError(f"--guidance must be a finite number >= 0, got {self.guidance}")

    def inputs(self, model_path: Path) -> dict:
        """What this run reads, by flag: `--out` must stay apart from all of it."""
        return {"--teacher": model_path, "--decoder": self.decoder,
                **{f"--{k.replace('_', '-')}": self.source.get(k) for k in ("prompts", "coco", "hps_benchmark")}}
