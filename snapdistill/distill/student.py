"""Students: built from the teacher's UNet, saved as complete diffusers pipeline folders.

A student folder runs unchanged in stock diffusers (`StableDiffusionPipeline.from_pretrained`). It
also holds `snapdistill.json`, the recipe `sample` reads (step count, timestep grid, guidance input).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from snapdistill.distill.arch import build_student
from snapdistill.errors import SnapdistillError
from snapdistill.manifest import atomic_write_text
from snapdistill.models import student_record
from snapdistill.models.student_record import StudentRecord

PREDICTION_CHOICES = ("auto", "same", "v_prediction")
# `auto` makes a 1-step student predict v, whatever its teacher predicts: its one step starts at t = 999, where x0
# read from eps amplifies the network's error by sigma/alpha ~ 14.6 (DESIGN.md), and v reads x0 as alpha*z - sigma*v
# (no division by alpha). On the toy world (512 prompts, 250 steps; README, "Two steps and one"): a 2->1 round from
# one 2-step student drew toy FID 621.9 as an eps student and 494.3 as a v student; a 4->2 round from one 4-step
# student 427.5 as eps and 513.2 as v (its first step starts at 999 too, but the switch away from the teacher's
# parametrisation cost more than it gave there).
V_STUDENT_MAX_STEPS = 1


def guided_student(teacher_unet, cond_dim: int = 256, arch: str = "same"):
    """The teacher UNet (block-removed by `arch`, see `arch.py`) with a guidance input
    (`time_cond_proj_dim = cond_dim`).

    The new projection starts at zero, so before training a `same` student is the teacher's conditional
    branch exactly; every other weight is the teacher's.
    """
    if teacher_unet.config.time_cond_proj_dim is not None:
        raise SnapdistillError("the teacher UNet already takes a guidance input; distil steps instead")
    student, report = build_student(teacher_unet, arch, time_cond_proj_dim=cond_dim)
    if report.new != ["time_embedding.cond_proj.weight"]:
        raise SnapdistillError(f"teacher weights do not fit the student: not from the teacher {report.new}")
    student.time_embedding.cond_proj.weight.data.zero_()
    return student


def copy_student(teacher_unet, arch: str = "same"):
    """An independent copy of a UNet (the stage-2 student starts as its teacher), block-removed by `arch`."""
    student, report = build_student(teacher_unet, arch)
    if report.new:
        raise SnapdistillError(f"teacher weights do not fit the student: not from the teacher {report.new}")
    return student


def check_prediction_choice(choice: str) -> str:
    """Refuse an unknown --student-prediction (checked before the teacher loads)."""
    if choice not in PREDICTION_CHOICES:
        raise SnapdistillError(f"unknown --student-prediction '{choice}'; choose one of {', '.join(PREDICTION_CHOICES)}")
    return choice


def student_prediction_type(choice: str, teacher_type: str, steps: int | None = None) -> str:
    """The student's prediction type: the teacher's (`same`), `v_prediction` (SnapFusion's switch), or `auto`: v for a
    step student of at most V_STUDENT_MAX_STEPS steps (`steps`; None: not a fixed-step student), else the teacher's."""
    choice = check_prediction_choice(choice)
    if choice == "auto":
        return "v_prediction" if steps is not None and steps <= V_STUDENT_MAX_STEPS else teacher_type
    return teacher_type if choice == "same" else choice


def save_student(folder: Path, *, teacher_dir: Path, unet, scheduler, record: StudentRecord) -> Path:
    """Write a complete pipeline folder: the teacher's other components, the student UNet and scheduler, and
    its record."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(teacher_dir, tmp, ignore=shutil.ignore_patterns("unet", "scheduler", student_record.FILE,
                                                                     "manifest.json", "*.md"))
    unet.save_pretrained(tmp / "unet")
    scheduler.save_pretrained(tmp / "scheduler")
    index = json.loads((tmp / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    atomic_write_text(tmp / "model_index.json", json.dumps(index, indent=2) + "\n")
    record.write(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def student_scheduler(teacher_scheduler, *, steps: int | None, prediction_type: str, **overrides):
    """The scheduler saved with a student, in the student's prediction type: trailing DDIM for a
    step-distilled student (the sampler its grid was trained on), else the teacher's own kind. `overrides` are
    further DDIM settings (a dmd generator's set_alpha_to_one)."""
    from diffusers import DDIMScheduler

    config = dict(teacher_scheduler.config)
    if steps is None:
        return type(teacher_scheduler).from_config(config, prediction_type=prediction_type)
    # Latents are never clipped. A DPM-Solver teacher config has no clip_sample, and DDIM's default (True)
    # would otherwise be set here and only undone, with a deprecation warning, by the pipeline.
    return DDIMScheduler.from_config(config, timestep_spacing="trailing", prediction_type=prediction_type,
                                     clip_sample=False, **overrides)
