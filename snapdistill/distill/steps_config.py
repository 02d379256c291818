"""The settings of `distill-steps`, shared by every route (`snapdistill.distill.routes`): what each mode reads,
the checks that refuse impossible values with one line, and the flags a route ignores."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from snapdistill.distill.consistency import check_distance
from snapdistill.distill.losses import check_guidance_range, check_solver, check_space
from snapdistill.distill.stage import CommonConfig
from snapdistill.errors import SnapdistillError
from snapdistill.sampling.prompts import prompts_from_file


@dataclass
class ConsistencyConfig:
    distance: str = "huber"             # huber (pseudo-Huber, as LCM) | l2
    huber_c: float = 0.001              # the pseudo-Huber c
    target_ema: float = 0.95            # μ of the target network: target ← μ·target + (1 − μ)·online
    num_ddim_timesteps: int = 50        # N, LCMScheduler's original_inference_steps; the solver skips k = T // N

    def check(self, to_steps: int) -> None:
        """Refuse impossible settings with one line (the teacher's T is checked by `check_schedule`)."""
        check_distance(self.distance)
        if not (math.isfinite(self.huber_c) and self.huber_c > 0):
            raise SnapdistillError(f"--huber-c must be a finite number > 0, got {self.huber_c}")
        if not 0 <= self.target_ema < 1:
            raise SnapdistillError(f"--target-ema must be in [0, 1), got {self.target_ema}")
        if self.num_ddim_timesteps < 1:
            raise SnapdistillError(f"--num-ddim-timesteps must be an integer >= 1, got {self.num_ddim_timesteps}")
        if not 1 <= to_steps <= self.num_ddim_timesteps:
            raise SnapdistillError(f"--to {to_steps}: a consistency student samples 1 to --num-ddim-timesteps "
                                   f"({self.num_ddim_timesteps}) steps of its grid")

    def check_schedule(self, num_train_timesteps: int) -> None:
        """Refuse a grid the teacher's schedule cannot hold: N above its T training timesteps."""
        if self.num_ddim_timesteps > num_train_timesteps:
            raise SnapdistillError(f"--num-ddim-timesteps {self.num_ddim_timesteps}: the teacher's schedule has only "
                                   f"{num_train_timesteps} timesteps")


DMD_STEP_COUNTS = (1, 2, 4, 8)  # generator step counts: trailing grids from T − 1 that LCMScheduler visits exactly


@dataclass
class DMDConfig:
    real_guidance: float = 1.5          # CFG scale of the real score (the teacher); DMD2 used 1.75 on SD 1.5. On the
    #                                     toy world (600 steps, 512 prompts; README, "One step by distribution
    #                                     matching"): toy FID / exact 693.7 / 0.994 at 5, 623.0 / 0.992 at 3, 543.9 /
    #                                     0.996 at 2, 512.3 / 0.998 at 1.5, 511.0 / 0.982 at 1 (no CFG)
    fake_updates: int = 5               # fake score updates per generator update (DMD2: 5 to 10)
    fake_lr: float | None = None        # the fake score's AdamW rate; None: the generator's --lr
    prompts: Path | None = None         # a prompt file as `sample --prompts` reads it (.txt one a line, .json, .jsonl);
    #                                     None: the shards' captions
    gan_weight: float = 0.0             # the generator's GAN term, in units of the DMD loss as a mean over elements
    #                                     (DMD2's; it used 1e-3 to 5e-3); 0: no GAN term, no image is read
    gan_head_weight: float = 1e-2       # the head's loss beside the fake network's denoising loss (DMD2: 1e-2)
    init: Path | None = None            # a student folder whose UNet G starts from (a stage-1 student, a step student
    #                                     of the same teacher); None: G starts as the teacher

    def check(self, from_steps: int | None, to_steps: int) -> None:
        """Refuse impossible settings with one line, before the teacher loads."""
        if from_steps is not None:
            raise SnapdistillError("--mode dmd takes no --from: the generator matches the teacher's distribution, "
                                   "not its trajectory")
        if to_steps not in DMD_STEP_COUNTS:
            raise SnapdistillError(f"--mode dmd trains a generator of {', '.join(map(str, DMD_STEP_COUNTS))} steps: set --to "
                                   f"to one of them (got --to {to_steps})")
        if not (math.isfinite(self.gan_weight) and self.gan_weight >= 0):
            raise SnapdistillError(f"--gan-weight must be a finite number >= 0 (0: no GAN term), got {self.gan_weight}")
        if not (math.isfinite(self.gan_head_weight) and self.gan_head_weight > 0):
            raise SnapdistillError(f"--gan-head-weight must be a finite number > 0, got {self.gan_head_weight}")
        if self.init is not None and not (Path(self.init) / "unet" / "config.json").is_file():
            raise SnapdistillError(f"--init {self.init}: no unet/config.json there; give a student folder (the "
                                   "student/ of a distill-guidance or distill-steps run)")
        if self.gan_weight > 0 and self.prompts is not None:
            raise SnapdistillError("--gan-weight needs real images: it reads the --shards' latents, and --prompts "
                                   "gives captions only; drop --prompts (or --gan-weight)")
        if self.fake_updates < 1:
            raise SnapdistillError(f"--fake-updates must be an integer >= 1, got {self.fake_updates}")
        if self.fake_lr is not None and not (math.isfinite(self.fake_lr) and self.fake_lr > 0):
            raise SnapdistillError(f"--fake-lr must be a finite number > 0, got {self.fake_lr}")
        if not (math.isfinite(self.real_guidance) and self.real_guidance >= 1):
            raise SnapdistillError(f"--real-guidance must be a finite number >= 1 (1: no guidance), got "
                                   f"{self.real_guidance}")
        if self.prompts is not None:  # missing, unreadable or empty: one line now, not after the teacher loads
            if not Path(self.prompts).is_file():
                raise SnapdistillError(f"{self.prompts}: prompt file not found; give a text file with one prompt a line")
            prompts_from_file(self.prompts)


MODES = ("direct", "progressive", "consistency", "dmd")
DEFAULT_FROM = 16
DEFAULT_TO = 8
# A round's (teacher substeps, solver, target space) where --teacher-substeps / --teacher-solver / --target-space are
# not given, by the round's teacher. A step-distilled teacher of at most ON_GRID_MAX_STEPS steps (the end of a
# progressive chain) was trained only on its own coarse grid and is sampled by DDIM there: its target is its own
# trajectory, one DDIM step per teacher step on that grid (Salimans & Ho's target), regressed in the student's own
# output (eps for an eps student, v for a v one: plain MSE on what the network emits). Any other teacher (a full
# denoiser, or a step student of more steps, whose grid is fine enough that it still answers between its points)
# takes two DPM-Solver++ substeps per teacher step, closer to its ODE, regressed in x0 (max(SNR, 1) weighted).
# Measured on the toy world (512 prompts, 250 steps; README, "Two steps and one"): 8->4 from an 8-step student, toy
# FID 429.5 with two DPM-Solver++ substeps against 505.9 on its own grid; 4->2 from a 4-step student 528.9 against
# 427.5 on its grid in x0 and 418.8 in eps (427.0 and 419.7 on a second seed), the student predicting eps; 2->1 from
# a 2-step student 936.6 against 621.9, and 494.3 in x0 with a v student (697.3 in eps).
ON_GRID_MAX_STEPS = 4
OWN_OUTPUT = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}   # prediction type -> its loss space


class Landing(NamedTuple):
    """How a round's target is made and read: the teacher's solver substeps per step, the solver, the loss space."""

    teacher_substeps: int
    teacher_solver: str
    target_space: str


DENOISER_TEACHER_LANDING = Landing(2, "dpmsolver++", "x0")


@dataclass
class StepsConfig:
    common: CommonConfig
    from_steps: int | None = None                       # None: 16 (direct, progressive); consistency takes none
    to_steps: int | None = None                         # None: 8 (1 for dmd)
    mode: str = "direct"                                # direct | progressive | consistency | dmd
    target_space: str | None = None                     # x0 | eps | v (DESIGN.md §3); None: by the round's teacher
    cfg_prob: float = 0.1                               # share of CFG-aware batches (SnapFusion §4.2)
    cfg_range: tuple[float, float] = (2.0, 14.0)
    gamma: float = 0.0                                  # weight of the original denoising loss (0: off)
    embed_guidance: bool = False                        # a base teacher's student takes w (one stage, no CFG batch)
    cond_dim: int = 256                                 # its time_cond_proj_dim, with embed_guidance
    teacher_substeps: int | None = None                 # solver substeps per teacher step in the landing target
    teacher_solver: str | None = None                   # dpmsolver++ (2M within each landing) | ddim; None (both):
    #                                                     by the round's teacher (see `landing`)
    consistency: ConsistencyConfig | None = None        # the settings of --mode consistency (None otherwise)
    dmd: DMDConfig | None = None                        # the settings of --mode dmd (None otherwise)

    def __post_init__(self):
        if self.mode == "consistency" and self.consistency is None:
            self.consistency = ConsistencyConfig()
        if self.mode == "dmd" and self.dmd is None:
            self.dmd = DMDConfig()
        if self.mode not in ("consistency", "dmd") and self.from_steps is None:
            self.from_steps = DEFAULT_FROM
        if self.to_steps is None:
            self.to_steps = 1 if self.mode == "dmd" else DEFAULT_TO

    def check(self) -> None:
        """Refuse impossible settings with one line, before the teacher loads or anything is written."""
        self.common.check()
        if self.mode not in MODES:
            raise SnapdistillError(f"unknown --mode '{self.mode}'; choose one of {', '.join(MODES)}")
        check_guidance_range(self.cfg_range)
        if self.dmd is not None and self.mode != "dmd":
            raise SnapdistillError(f"--real-guidance, --fake-updates, --fake-lr, --prompts, --gan-weight, "
                                   f"--gan-head-weight and --init need --mode dmd, got --mode {self.mode}")
        if self.mode == "dmd":
            if self.consistency is not None:
                raise SnapdistillError("--loss, --huber-c, --target-ema and --num-ddim-timesteps need --mode "
                                       "consistency, got --mode dmd")
            self.dmd.check(self.from_steps, self.to_steps)
            return
        if self.mode == "consistency":
            if self.from_steps is not None:
                raise SnapdistillError("--mode consistency takes no --from: the student learns the teacher's whole "
                                       "trajectory (set its grid with --num-ddim-timesteps)")
            self.consistency.check(self.to_steps)
            return
        if self.consistency is not None:
            raise SnapdistillError(f"--loss, --huber-c, --target-ema and --num-ddim-timesteps need --mode consistency, "
                                   f"got --mode {self.mode}")
        n, m = self.from_steps, self.to_steps
        if n < 1 or m < 1:
            raise SnapdistillError(f"--from and --to must be integers >= 1 (the student takes --to steps), got "
                                   f"--from {n} --to {m}")
        if m >= n:
            raise SnapdistillError(f"--to must be smaller than --from (the student takes fewer steps than its "
                                   f"teacher), got --from {n} --to {m}")
        if n % m:
            raise SnapdistillError(f"--to must divide --from (each student step replaces a whole number of teacher "
                                   f"steps), got --from {n} --to {m}")
        if self.mode == "progressive" and (n // m) & (n // m - 1):
            raise SnapdistillError(f"progressive distillation halves the steps: --from/--to must be a power of 2, "
                                   f"got {n // m}")
        if not 0 <= self.cfg_prob <= 1:
            raise SnapdistillError(f"--cfg-prob must be in [0, 1], got {self.cfg_prob}")
        if self.target_space is not None:
            check_space(self.target_space)
        if self.teacher_solver is not None:
            check_solver(self.teacher_solver)
        if self.teacher_substeps is not None and not 1 <= self.teacher_substeps <= 64:
            raise SnapdistillError(f"--teacher-substeps must be in [1, 64], got {self.teacher_substeps}")


def landing(config: StepsConfig, teacher_steps: int | None, student_type: str) -> Landing:
    """A round's landing: the flags where given, else by its teacher's step count (`teacher_steps`; None: a teacher
    that is not step-distilled) and the student's prediction type."""
    if teacher_steps is not None and teacher_steps <= ON_GRID_MAX_STEPS:
        default = Landing(1, "ddim", OWN_OUTPUT[student_type])
    else:
        default = DENOISER_TEACHER_LANDING
    given = Landing(config.teacher_substeps, config.teacher_solver, config.target_space)
    return Landing(*(d if g is None else g for d, g in zip(default, given)))


def check_step_teacher(config: StepsConfig, teacher_steps: int | None) -> None:
    """Refuse a --from other than the step count of a step-distilled teacher (`teacher_steps`; None: any other
    teacher): it was trained only on its own grid, and another N would query it where it never learnt."""
    if teacher_steps is not None and teacher_steps != config.from_steps:
        raise SnapdistillError(f"--teacher is a {teacher_steps}-step student, trained only on its own grid: "
                               f"set --from {teacher_steps} (got --from {config.from_steps})")


def ignored_flags(config: StepsConfig, teacher_w_dim: int | None) -> list[str]:
    """One line per flag that is set away from its default and does nothing with this teacher.

    `teacher_w_dim` is the teacher's time_cond_proj_dim (None: it runs CFG), read from its unet/config.json.
    """
    default = {f.name: f.default for f in dataclasses.fields(StepsConfig)}
    if config.mode in ("consistency", "dmd"):
        return _ignored_by_route(config, default, teacher_w_dim)
    student_takes_w = teacher_w_dim is not None or config.embed_guidance
    lines = []
    if student_takes_w and config.cfg_prob != default["cfg_prob"]:
        lines.append("--cfg-prob has no effect: the student takes w, so every batch is distilled at a guidance "
                     "scale drawn from --guidance-range")
    if teacher_w_dim is not None and config.embed_guidance:
        lines.append("--embed-guidance has no effect: the teacher already takes w, and its student copies it")
    if not (config.embed_guidance and teacher_w_dim is None) and config.cond_dim != default["cond_dim"]:
        lines.append("--cond-dim has no effect: only --embed-guidance with a teacher that takes no w adds a "
                     "guidance input")
    return lines


def _ignored_by_route(config: StepsConfig, default: dict, teacher_w_dim: int | None) -> list[str]:
    """`ignored_flags` for --mode consistency and dmd: the step-distillation flags they do not read (dmd reads no
    guidance range either: its real score takes --real-guidance)."""
    unused = {"cfg_prob": "--cfg-prob", "target_space": "--target-space", "gamma": "--gamma",
              "teacher_substeps": "--teacher-substeps", "teacher_solver": "--teacher-solver",
              "embed_guidance": "--embed-guidance"}
    if config.mode == "dmd":
        unused.update(cfg_range="--guidance-range", cond_dim="--cond-dim")
    lines = [f"{flag} has no effect with --mode {config.mode}" for name, flag in unused.items()
             if getattr(config, name) != default[name]]
    if config.mode == "dmd" and config.common.feat_weight:
        lines.append("--feat-weight has no effect with --mode dmd (no feature distillation)")
    if config.mode == "consistency" and teacher_w_dim is not None and config.cond_dim != default["cond_dim"]:
        lines.append("--cond-dim has no effect: the teacher already takes w, and its student copies it")
    return lines
