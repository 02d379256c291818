"""`snapdistill.json`: what a distilled student records about itself, written and read in one place.

The distillation stages write it into every student folder; `sample` reads it to sample the student as it
was trained (its step count, on its timesteps) and to refuse another grid unless asked. A teacher has none.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from snapdistill.manifest import atomic_write_text

FILE = "snapdistill.json"


@dataclass(frozen=True)
class StudentRecord:
    """The recipe of a student. Fields left at None are not written (a stage-1 student has no step count)."""

    stage: str | None = None                      # distill-guidance | distill-steps
    num_inference_steps: int | None = None        # None: a stage-1 student, sampled with any steps and scheduler
    timesteps: list[int] | None = None            # the timesteps its own scheduler visits in that many steps
    mode: str | None = None                       # direct | progressive | consistency (distill-steps)
    from_steps: int | None = None                 # its teacher's steps in the last round (distill-steps)
    guidance_embedding: bool = False              # takes w = s − 1 as an input (one UNet call per step)
    prediction_type: str | None = None
    guidance_range: list[float] | None = None     # s ~ U(range) in training (distill-guidance)
    student_arch: str = "same"
    original_inference_steps: int | None = None   # consistency: the N-point grid its LCMScheduler samples from
    resolution: int | None = None                 # training image side; `sample` defaults to it
    guidance: float | None = None                 # the scale `sample` feeds it by default (dmd: 1, guidance baked in)

    @property
    def step_distilled(self) -> bool:
        """True for a student trained for a fixed step count on a fixed grid."""
        return self.num_inference_steps is not None

    @property
    def grid_steps(self) -> int | None:
        """The one step count it samples, on the one grid it was trained on; None for a stage-1 student (any count)
        and a consistency student (any count up to N)."""
        return None if self.mode == "consistency" else self.num_inference_steps

    def on_grid(self, steps: int) -> bool:
        """Whether its own scheduler at `steps` steps visits only timesteps it was trained on: its own count, or,
        for a consistency student, any count up to N (LCMScheduler picks them among its N-point grid)."""
        if self.mode == "consistency" and self.original_inference_steps:
            return 1 <= steps <= self.original_inference_steps
        return steps == self.num_inference_steps

    def to_json(self) -> dict:
        """The keys written: every field that is set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def write(self, folder: Path) -> Path:
        """Write `folder/snapdistill.json` atomically; return its path."""
        path = Path(folder) / FILE
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> StudentRecord | None:
        """The record of a student folder, or None for a teacher (no file). Unknown keys are ignored."""
        from snapdistill.jsonl import read_json_object

        data = read_json_object(Path(folder) / FILE, "student record")
        if data is None:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
