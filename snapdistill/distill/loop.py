"""The one training loop both distillation stages share, on accelerate.

Determinism: all randomness of optimisation step k comes from a generator seeded by (seed, k, rank,
micro-step), and the data order is a pure function of the seed, so resuming from a checkpoint gives
bit-for-bit the weights of a run that never stopped. EMA weights (the inference snapshot) are saved
apart from the resume state.

Checkpoints hold tensors and JSON only (safetensors, weights-only torch files, `trainer.json`), and a folder
with any other file is refused unread: `--resume` never unpickles objects, so a checkpoint cannot run code.

A stage may hand the loop a second module that its loss reads and that changes as training goes (a consistency
model's target network, updated by `after_step` after each optimisation step; a fake score network, trained by the
route's loss with its own optimiser, `extra_optimizer`); its weights, and that optimiser's state, are checkpointed
beside the student's, so a resumed run continues it bit for bit.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from snapdistill.dist import on_cpu
from snapdistill.distill import tracking
from snapdistill.distill.checkpoint_files import (  # noqa: F401 - latest_checkpoint and the names are used from here
    CHECKPOINT_FILES,
    CHECKPOINTS,
    EMA,
    EXTRA,
    EXTRA_OPTIMIZER,
    LATEST,
    MODEL,
    OPTIMIZER,
    SCALER,
    TRAINER,
    check_checkpoint,
    latest_checkpoint,
    load_safetensors,
    load_tensors,
    record_files,
    trainer_state,
)
from snapdistill.distill.optim import check_optimizer, make_optimizer
from snapdistill.distill.tracking import check_report_to
from snapdistill.errors import SnapdistillError
from snapdistill.manifest import atomic_write_text


@dataclass
class TrainConfig:
    max_steps: int = 500                    # optimisation steps
    max_minutes: float | None = None        # wall-clock budget; stops early (and checkpoints) when reached
    batch_size: int = 16                    # per process and micro-step
    grad_accum: int = 1                     # micro-steps per optimisation step
    lr: float | None = None                 # AdamW peak learning rate; None: `auto_lr` of the student's size
    warmup_steps: int = 20                  # linear warm-up, then cosine decay to 0 at max_steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0              # gradient clipping
    ema_decay: float = 0.999                # EMA ceiling (with warm-up); 0 disables EMA
    mixed_precision: str = "no"             # no | fp16 | bf16
    gradient_checkpointing: bool = False
    checkpoint_every: int = 100             # steps between resume checkpoints (0: only at the end)
    validate_every: int = 0                 # steps between validation grids (0: only at the end)
    seed: int = 0
    optimizer: str = "adamw"                # adamw | adamw8bit (bitsandbytes, CUDA only)
    report_to: str = "none"                 # none | tensorboard | wandb (accelerate trackers)

    def check(self) -> None:
        """Refuse impossible numbers with one line, before anything loads (a batch size of 0 would hang)."""
        counts = {"--max-steps": (self.max_steps, 1), "--batch-size": (self.batch_size, 1),
                  "--grad-accum": (self.grad_accum, 1), "--warmup-steps": (self.warmup_steps, 0),
                  "--checkpoint-every": (self.checkpoint_every, 0), "--validate-every": (self.validate_every, 0)}
        for flag, (value, least) in counts.items():
            if value < least:
                raise SnapdistillError(f"{flag} must be an integer >= {least}, got {value}")
        # Written as `not (ok)` so that nan, which compares false to everything, is refused too.
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise SnapdistillError(f"--lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise SnapdistillError(f"--ema-decay must be in [0, 1) (0 disables EMA), got {self.ema_decay}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise SnapdistillError(f"--max-minutes must be a finite number > 0, got {self.max_minutes}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise SnapdistillError(f"max_grad_norm must be a finite number > 0, got {self.max_grad_norm}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise SnapdistillError(f"unknown --mixed-precision '{self.mixed_precision}'; choose one of no, fp16, bf16")
        check_optimizer(self.optimizer)
        check_report_to(self.report_to)


def step_generator(seed: int, step: int, rank: int = 0, micro: int = 0) -> torch.Generator:
    """The CPU generator of one micro-step: a pure function of (seed, step, rank, micro)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + rank) * 101 + micro)


# The default peak learning rate by model size. On the toy world (a 2M-parameter UNet) 3e-4 won for both stages
# (stage 1, 400 steps: toy FID 465 against 486 at 1e-3 and 517 at 1e-4; stage 2: 472 against 483 at 1e-4). Full
# fine-tuning of an SD-size UNet (~860M) is unstable at such rates; 1e-5 is the usual rate there.
AUTO_LR = ((100_000_000, 3e-4), (None, 1e-5))  # (up to this many parameters, rate)


def auto_lr(model: torch.nn.Module) -> float:
    """The default peak learning rate for a student of this many parameters (see AUTO_LR)."""
    n = sum(p.numel() for p in model.parameters())
    return next(rate for limit, rate in AUTO_LR if limit is None or n <= limit)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _save_checkpoint(accelerator, run_dir: Path, step: int, consumed: int, model, optimizer, ema,
                     extra_module=None, extra_optimizer=None) -> Path:
    """Save the resume state atomically: a temporary folder, a rename, then the `latest` pointer.

    Only tensors and JSON: the model as safetensors, the optimizer and EMA state with torch.save (read back with
    weights_only=True), and `trainer.json`. The LR schedule is a function of the step and the randomness of each
    step comes from `step_generator`, so neither needs saving. Every process holds the same state (DDP), so the
    main process writes it.
    """
    from safetensors.torch import save_file

    root = Path(run_dir) / CHECKPOINTS
    name = f"step-{step:07d}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _check_space(tmp, accelerator.unwrap_model(model), ema, extra_module, extra_optimizer is not None)
        try:
            save_file({k: v.contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()},
                      tmp / MODEL)
            if extra_module is not None:
                save_file({k: v.contiguous() for k, v in extra_module.state_dict().items()}, tmp / EXTRA)
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
            if extra_optimizer is not None:
                torch.save(extra_optimizer.state_dict(), tmp / EXTRA_OPTIMIZER)
            if ema is not None:
                torch.save(ema.state_dict(), tmp / EMA)
            if accelerator.scaler is not None:  # fp16 loss scaling
                torch.save(accelerator.scaler.state_dict(), tmp / SCALER)
            atomic_write_text(tmp / TRAINER, json.dumps({"step": step, "consumed": consumed}) + "\n")
            record_files(tmp)
        except BaseException:  # a full disk: free what was written; the previous checkpoint stays the latest
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(root / LATEST, name + "\n")
        for old in sorted(root.glob("step-*"))[:-2]:  # keep the two newest
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return root / name


def checkpoint_bytes(model: torch.nn.Module, ema: bool, extra_module: torch.nn.Module | None = None,
                     extra_optimized: bool = False) -> int:
    """About what one checkpoint takes on disk: the weights, AdamW's two moments, the EMA copy and the extra
    module (a consistency target network; a fake score network, with its AdamW moments when `extra_optimized`)."""
    def size(module):
        return sum(p.numel() * p.element_size() for p in module.parameters())

    extra = size(extra_module) * (1 + 2 * int(extra_optimized)) if extra_module is not None else 0
    return size(model) * (3 + int(ema)) + extra


def _check_space(folder: Path, model: torch.nn.Module, ema, extra_module=None, extra_optimized: bool = False) -> None:
    """Refuse to start a checkpoint the disk cannot hold, in one line naming the folder and the space needed
    (a write that fails half-way is also reported in one line, by the CLI; this says how much to free)."""
    need = checkpoint_bytes(model, ema is not None, extra_module, extra_optimized)
    free = shutil.disk_usage(folder).free
    if free < need:
        shutil.rmtree(folder, ignore_errors=True)
        raise SnapdistillError(f"{folder.parent}: a checkpoint needs about {need / 2**20:.1f} MB and the disk has "
                               f"{free / 2**20:.1f} MB free; free some space there or choose another --out, then "
                               f"rerun with --resume latest")


def _load_checkpoint(path: Path, accelerator, model, optimizer, ema, extra_module=None,
                     extra_optimizer=None) -> tuple[int, int]:
    """Restore what `_save_checkpoint` wrote into the prepared model, optimizer, EMA, extra module and its
    optimiser; return (step, consumed)."""
    path = check_checkpoint(path)
    step, consumed = trainer_state(path)
    model = accelerator.unwrap_model(model)
    device = next(model.parameters()).device
    model.load_state_dict(load_safetensors(path, MODEL, device))
    if extra_module is not None:
        extra_module.load_state_dict(load_safetensors(path, EXTRA, next(extra_module.parameters()).device))
    optimizer.load_state_dict(load_tensors(path / OPTIMIZER, device))
    if extra_optimizer is not None:
        if not (path / EXTRA_OPTIMIZER).is_file():
            raise SnapdistillError(f"{path}: not a complete checkpoint (no {EXTRA_OPTIMIZER})")
        extra_optimizer.load_state_dict(load_tensors(path / EXTRA_OPTIMIZER, next(extra_module.parameters()).device))
    if ema is not None:
        if not (path / EMA).is_file():
            raise SnapdistillError(f"{path}: not a complete checkpoint (no {EMA})")
        ema.load_state_dict(load_tensors(path / EMA, device))
    if accelerator.scaler is not None and (path / SCALER).is_file():
        accelerator.scaler.load_state_dict(load_tensors(path / SCALER, device))
    return step, consumed


def _step_of(line: str) -> float:
    """The step of a stats line; infinity (dropped on resume) for a line that is not one (cut by a crash)."""
    try:
        entry = json.loads(line)
        return float(entry["step"])
    except (ValueError, TypeError, KeyError):
        return math.inf


def _truncate_stats(path: Path, step: int) -> None:
    """Drop log lines written after `step`: the checkpoint a run resumes from, or 0 for a fresh run."""
    if path.is_file():
        keep = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if _step_of(ln) <= step]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    stopped_by: str          # "max_steps" | "max_minutes"
    seconds: float
    ema: Any                 # EMAModel or None
    trackers: list = ()      # accelerate trackers, still open: the caller logs the final grid, then finishes them


def train(
    *,
    run_dir: Path,
    student: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any, torch.Generator], torch.Tensor],  # (module, raw batch, gen) -> per-sample loss
    batches: Callable[[int], Iterator[Any]],                     # skip -> iterator of raw batches
    config: TrainConfig,
    resume: Path | None = None,
    validate: Callable[[int], Any] | None = None,               # step -> grid image or None (main process)
    after_step: Callable[[torch.nn.Module], None] | None = None,  # unwrapped student -> None, after each step
    extra_module: torch.nn.Module | None = None,                # not optimised here; its weights are checkpointed
    extra_optimizer: torch.optim.Optimizer | None = None,       # the loss's optimiser of extra_module; checkpointed
) -> TrainResult:
    """Optimise `student` on `loss_fn` until max_steps or max_minutes; checkpoints and logs in run_dir.

    `loss_fn` is handed the module being optimised (after `accelerator.prepare`, so maybe DDP-wrapped) on
    every call. `after_step` runs on every process after each optimisation step (after the EMA update), and
    `extra_module` (the module it updates, if any) is saved in and restored from every checkpoint, with the state of
    `extra_optimizer` when the loss trains that module itself (a fake score network).
    """
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    run_dir = Path(run_dir)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
                              cpu=on_cpu(), log_with=tracking.log_with(config.report_to),
                              project_dir=str(run_dir / "logs"))
    if config.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    student.train()
    lr = config.lr if config.lr is not None else auto_lr(student)
    adamw = make_optimizer(config.optimizer, student.parameters(), lr=lr, weight_decay=config.weight_decay)
    student, optimizer = accelerator.prepare(student, adamw)
    ema = None
    if config.ema_decay > 0:
        ema = EMAModel(accelerator.unwrap_model(student).parameters(), decay=config.ema_decay, use_ema_warmup=True)

    # Resume.
    step, consumed = 0, 0
    if resume is not None:
        step, consumed = _load_checkpoint(resume, accelerator, student, optimizer, ema, extra_module, extra_optimizer)
    if accelerator.is_main_process:  # a fresh run starts an empty log; a resumed one drops lines after its step
        _truncate_stats(run_dir / "stats.jsonl", step)
    # The LR schedule is a pure function of the step, so a resumed run rebuilds it there (last_epoch = step - 1).
    # It is stepped once per optimisation step by hand: accelerate's wrapper would step it once per process,
    # making the schedule depend on the number of processes.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        adamw, lambda s: lr_factor(s, config.warmup_steps, config.max_steps), last_epoch=step - 1)
    per_step = config.batch_size * config.grad_accum
    data = batches(consumed)
    tracking.start(accelerator, {**vars(config), "lr": lr})

    # Train.
    started, loss_value, stopped_by = time.perf_counter(), float("nan"), "max_steps"
    columns = (TextColumn("distil"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
               TimeRemainingColumn())
    with Progress(*columns, disable=not accelerator.is_main_process) as bar:
        task = bar.add_task("distil", total=config.max_steps, completed=step, loss=float("nan"))
        while step < config.max_steps:
            tick = time.perf_counter()
            for micro in range(config.grad_accum):
                with accelerator.accumulate(student):
                    gen = step_generator(config.seed, step, accelerator.process_index, micro)
                    loss = loss_fn(student, next(data), gen).mean()
                    if not torch.isfinite(loss):
                        last = latest_checkpoint(run_dir)
                        raise SnapdistillError(
                            f"non-finite loss at step {step}; stopped. Last good checkpoint: {last or 'none'} "
                            "(lower --lr, or resume from it)")
                    accelerator.backward(loss)
                    grad_norm = (accelerator.clip_grad_norm_(student.parameters(), config.max_grad_norm)
                                 if accelerator.sync_gradients else None)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            schedule.step()
            # Update EMA.
            if ema is not None:
                ema.step(accelerator.unwrap_model(student).parameters())
            if after_step is not None:
                after_step(accelerator.unwrap_model(student))
            step += 1
            consumed += per_step
            loss_value = float(accelerator.reduce(loss.detach(), reduction="mean"))
            # Log.
            if accelerator.is_main_process:
                row = {"step": step, "loss": loss_value, "lr": schedule.get_last_lr()[0],
                       "grad_norm": float(grad_norm) if grad_norm is not None else None,
                       "samples_per_s": per_step * accelerator.num_processes / (time.perf_counter() - tick)}
                with open(run_dir / "stats.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.update(task, completed=step, loss=loss_value)
                accelerator.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=step)
            out_of_time = (config.max_minutes is not None
                           and time.perf_counter() - started > config.max_minutes * 60)
            stopped_by = "max_minutes" if out_of_time else stopped_by
            # Save snapshot.
            done = step >= config.max_steps or out_of_time
            if done or (config.checkpoint_every and step % config.checkpoint_every == 0):
                _save_checkpoint(accelerator, run_dir, step, consumed, student, optimizer, ema, extra_module,
                                 extra_optimizer)
            # Validate.
            if validate and accelerator.is_main_process and config.validate_every and step % config.validate_every == 0:
                tracking.log_grid(accelerator.trackers, validate(step), step)
            if done:
                break
    accelerator.wait_for_everyone()
    return TrainResult(step, loss_value, stopped_by, time.perf_counter() - started, ema, accelerator.trackers)


def ema_weights_into(student: torch.nn.Module, result: TrainResult) -> torch.nn.Module:
    """The inference snapshot: the EMA weights copied into `student` (unchanged without EMA)."""
    if result.ema is not None:
        result.ema.copy_to(student.parameters())
    return student
