"""Experiment trackers through accelerate (`--report-to`): none (the default), tensorboard or wandb.

Nothing is reported, and nothing is imported, unless asked. The run's rows (loss, lr, grad norm, samples/s) go
to `accelerator.log`; validation grids to each tracker's `log_images`. tensorboard writes to `RUN/logs`; wandb
follows its own settings (`WANDB_MODE=offline` keeps it on the machine).
"""

from __future__ import annotations

import importlib.util

import numpy as np

from snapdistill.errors import SnapdistillError

REPORT_TO = ("none", "tensorboard", "wandb")
# The package each tracker imports (tensorboard's writer is torch.utils.tensorboard, which needs `tensorboard`).
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
PROJECT = "snapdistill"


def check_report_to(name: str) -> str:
    """Refuse an unknown --report-to, and a tracker whose package is not installed."""
    if name not in REPORT_TO:
        raise SnapdistillError(f"unknown --report-to '{name}'; choose one of {', '.join(REPORT_TO)}")
    package = _PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise SnapdistillError(f"--report-to {name} needs the {package} package: pip install 'snapdistill[{name}]'")
    return name


def log_with(name: str):
    """accelerate's `log_with` for --report-to (None: no tracker)."""
    return None if name == "none" else name


def start(accelerator, config: dict) -> None:
    """Start the trackers with the run's settings as hyperparameters (numbers, strings and bools only)."""
    if accelerator.log_with:
        flat = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(PROJECT, config=flat)


def log_grid(trackers, grid: np.ndarray | None, step: int) -> None:
    """A validation grid (uint8 [H, W, 3]) to every tracker that takes images."""
    if grid is None:
        return
    for tracker in trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"val": grid[None]}, step=step, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({"val": [grid]}, step=step)


def finish(trackers) -> None:
    """Close every tracker (not `accelerator.end_training`, which would also end the process group that a
    progressive run's next round needs)."""
    for tracker in trackers:
        tracker.finish()
