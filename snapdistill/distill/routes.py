"""`distill-steps --mode`: one registry from a mode to the route that trains it.

Every route reads the same `StepsConfig` and runs on the one training loop (`loop.py`); a route's second network (a
consistency target, a fake score) is a field of its own state. The command asks this registry for the route,
so no route imports another.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from snapdistill.distill import consistency_stage, dmd_stage, steps_stage
from snapdistill.distill.stage import teacher_unet_config
from snapdistill.distill.steps_config import StepsConfig, ignored_flags

ROUTES: dict[str, Callable[[StepsConfig], Path | None]] = {
    "direct": steps_stage.run,
    "progressive": steps_stage.run,
    "consistency": consistency_stage.run,
    "dmd": dmd_stage.run,
}


def run(config: StepsConfig) -> Path | None:
    """Check the settings, warn once per flag the route ignores, and train the route of `config.mode`."""
    config.check()
    for line in ignored_flags(config, teacher_unet_config(config.common).get("time_cond_proj_dim")):
        print(f"warning: {line}", file=sys.stderr)
    return ROUTES[config.mode](config)
