"""Block-removed 8-step students for the bench: one 16→8 `distill-steps` run per `--student-arch`.

Each arch is distilled from the same stage-1 (guided) student; a finished run in `workdir` is reused.
An arch the teacher cannot be cut to is reported with its one-line reason instead of a student.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from snapdistill.distill import steps_stage
from snapdistill.distill.arch import ARCHS, unet_params
from snapdistill.distill.loop import TrainConfig
from snapdistill.distill.stage import CommonConfig
from snapdistill.errors import SnapdistillError
from snapdistill.inspect import InspectConfig, inspect_model
from snapdistill.manifest import MANIFEST


def bench_arch(teacher_dir: Path, shards_dir: Path, workdir: Path, *, prompts: list[str], steps_budget: int,
               archs: tuple[str, ...] = ARCHS, train: TrainConfig | None = None) -> dict:
    """{arch: {params, param_ratio (vs the teacher UNet), s_per_image, student}} or {arch: {error}}."""
    from diffusers import UNet2DConditionModel

    teacher_params = unet_params(UNet2DConditionModel.load_config(Path(teacher_dir) / "unet"))
    train = dataclasses.replace(train or TrainConfig(), max_steps=steps_budget)
    rows = {}
    for arch in archs:
        out = Path(workdir) / f"arch_{arch}8"
        try:
            if not (out / MANIFEST).is_file():
                common = CommonConfig(teacher=str(teacher_dir), shards=Path(shards_dir), out=out, train=train,
                                      student_arch=arch, overwrite=True)
                steps_stage.run(steps_stage.StepsConfig(common=common, from_steps=16, to_steps=8))
        except SnapdistillError as e:
            rows[arch] = {"error": str(e)}
            continue
        r = inspect_model(InspectConfig(model=str(out / "student"), prompts=prompts))  # its own 8 steps, s = 7.5
        rows[arch] = {"params": r["unet_parameters"], "param_ratio": r["unet_parameters"] / teacher_params,
                      "s_per_image": r["s_per_image"], "student": str(out / "student")}
    return rows
