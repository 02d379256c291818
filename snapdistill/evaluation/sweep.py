"""The guidance sweep of `eval`: each chosen run sampled again at other guidance scales.

Every point reuses the run's own sample settings (model, steps, size, scheduler, seeds) and goes
through the `sample` stage into OUT/sweep/, so the FID–CLIP trade-off curves compare like with like.
"""

from __future__ import annotations

import re
from pathlib import Path

from snapdistill.errors import SnapdistillError
from snapdistill.evaluation.runs import EvalConfig, SampleRun, read_run


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def resample_config(run: SampleRun, guidance: float, out: Path, config: EvalConfig):
    """The run's own sample settings (model, steps, size, scheduler, seed) at another guidance scale."""
    from snapdistill.sampling.config import SampleConfig

    c = run.manifest["config"]
    scheduler = c.get("scheduler")
    name = scheduler.get("name") if isinstance(scheduler, dict) else scheduler
    return SampleConfig(
        model=c["model_path"], out=out, source=c.get("source", {}), steps=c["steps"], guidance=guidance,
        size=c["size"], scheduler=None if name in (None, "own") else name, spacing=c.get("spacing", "trailing"),
        negative_prompt=c.get("negative_prompt"), seed=int(c.get("seed", 0)), batch_size=config.batch_size,
        dtype=c.get("dtype", "fp32"), device=config.device, overwrite=True,  # eval owns its sweep folders
        allow_off_grid=bool(c.get("allow_off_grid", False)),  # a run sampled off its grid is re-sampled there
    )


def sweep(runs: list[SampleRun], config: EvalConfig, state) -> list[SampleRun]:
    """Each run sampled again at every sweep guidance scale it was not sampled at."""
    from snapdistill.sampling import stage
    from snapdistill.sampling.prompts import PromptItem

    extra = []
    chosen = None if not config.sweep_runs else {Path(f).resolve() for f in config.sweep_runs}
    for run in runs:
        if chosen is not None and run.path.resolve() not in chosen:
            continue
        seed = int(run.manifest["config"].get("seed", 0))
        if any(int(r["seed"]) != seed + int(r["index"]) for r in run.rows):
            raise SnapdistillError(f"{run.path}: seeds are not --seed + index; cannot re-sample it for the sweep")
        items = [PromptItem(int(r["index"]), r["prompt"], r.get("style")) for r in run.rows]
        for g in config.guidance_sweep or []:
            if run.guidance is not None and abs(g - run.guidance) < 1e-9:
                continue
            folder = Path(config.out) / "sweep" / f"{_slug(run.label)}-s{run.steps}-g{g:g}"
            stage.run(resample_config(run, g, folder, config), items)
            state.wait_for_everyone()  # the main process writes the sample manifest last
            extra.append(read_run(folder, run.label, sweep=True))
    return extra
