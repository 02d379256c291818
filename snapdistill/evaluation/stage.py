"""The `eval` stage: score sample runs with HPSv2, FID, CLIP score and the toy judge; write the report.

Inputs are `sample` folders (refused without their manifest). Every metric runs per image on each
process's share of the prompts (split by index) and is gathered in prompt order, so the numbers do
not depend on the number of processes; rank 0 writes `report.json`, `report.md`, the plots and,
last, `manifest.json`. With `guidance_sweep`, each run is sampled again at every listed guidance
scale (through the `sample` stage, into OUT/sweep/) for the FID–CLIP trade-off curves.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from snapdistill.errors import SnapdistillError
from snapdistill.evaluation.runs import EvalConfig, SampleRun, read_run
from snapdistill.evaluation.sweep import sweep
from snapdistill.manifest import MANIFEST, atomic_write_text, input_entry, require_manifest, write_manifest
from snapdistill.metrics import image_paths, open_images
from snapdistill.metrics.aggregate import mean_summary

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def included_rows(folders: list[Path], hps_version: str | None) -> list[dict]:
    """Rows of earlier eval reports, refused when their HPS version differs from this one's or each other's."""
    rows = []
    for folder in folders:
        require_manifest(folder, stage="eval")
        try:
            report = json.loads((Path(folder) / REPORT_JSON).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise SnapdistillError(f"{folder}: unreadable {REPORT_JSON} ({e}); rerun that eval") from e
        rows += [{**r, "included_from": str(folder)} for r in report["rows"]]
    versions = {r["metrics"]["hps"]["version"] for r in rows if r.get("metrics", {}).get("hps")}
    versions |= {hps_version} if hps_version else set()
    if len(versions) > 1:
        raise SnapdistillError(
            f"HPS {' and '.join(sorted(versions))} in one comparison; their scores are not comparable, "
            "re-evaluate with one --hps-version"
        )
    return rows


# Per-image work, split over processes ---------------------------------------------------------


def map_rows(state, run: SampleRun, fn, batch_size: int) -> list:
    """fn(images, rows) -> one value per row, on this process's share (index mod processes); gathered in row order."""
    from accelerate.utils import gather_object

    mine = list(range(state.process_index, len(run.rows), state.num_processes))
    done = []
    for lo in range(0, len(mine), batch_size):
        idx = mine[lo : lo + batch_size]
        rows = [run.rows[i] for i in idx]
        values = fn(open_images(image_paths(run.path, rows)), rows)
        done += list(zip(idx, values))
    if state.num_processes > 1:
        done = gather_object(done)
    return [v for _, v in sorted(done, key=lambda pair: pair[0])]


def _prompts(rows: list[dict]) -> list[str]:
    return [r["prompt"] for r in rows]


def _fid(scorers, state, run: SampleRun, batch_size: int) -> dict:
    from snapdistill.metrics.fid import to_uint8_batch

    paths = image_paths(run.path, run.rows)
    w, h = open_images(paths[:1])[0].size
    if w != h:
        raise SnapdistillError(f"{paths[0]}: FID compares square images with the reference, got {w}x{h}")
    fid = scorers.fid(w)
    mine = paths[state.process_index :: state.num_processes]
    batches = (to_uint8_batch(open_images(mine[lo : lo + batch_size])) for lo in range(0, len(mine), batch_size))
    return fid.score(batches, n_fake=len(paths))


def evaluate_run(run: SampleRun, scorers, state, config: EvalConfig) -> dict:
    """Every configured metric of one run, each with its sample count."""
    from snapdistill.metrics.hps import hps_summary
    from snapdistill.metrics.toy import image_mse, judge_per_image, pair_with_reference, toy_summary

    bs = config.batch_size
    out = {}
    if scorers.hps is not None:
        scores = map_rows(state, run, lambda ims, rows: scorers.hps.score(ims, _prompts(rows), bs), bs)
        out["hps"] = hps_summary(run.rows, np.array(scores), scorers.hps.version)
    if scorers.clip is not None:
        scores = map_rows(state, run, lambda ims, rows: scorers.clip.score(ims, _prompts(rows), bs), bs)
        out["clip"] = {"score": mean_summary(scores)["mean"], "n": len(scores), "model": scorers.clip.name}
    if scorers.fid_enabled:
        out["fid"] = _fid(scorers, state, run, bs)
    if config.toy or (config.toy is None and run.is_toy):
        per_image = map_rows(state, run, lambda ims, rows: judge_per_image(scorers.judge, ims, _prompts(rows)), bs)
        out["toy"] = toy_summary(per_image, scorers.toy_real_features)
    ref = scorers.mse_reference
    if ref is not None and ref.path.resolve() != run.path.resolve():
        ref_rows = pair_with_reference(run.rows, ref.rows, run=run.path, ref=ref.path)
        values = image_mse(image_paths(run.path, run.rows), image_paths(ref.path, ref_rows))
        out["mse_vs_ref"] = {"mse": float(values.mean()), "n": len(values), "reference": str(ref.path)}
    return out


# The stage ----------------------------------------------------------------------------------------


class Scorers:
    """The metric models of one eval, loaded once; HPS and CLIP up front, so a bad checkpoint fails first."""

    def __init__(self, config: EvalConfig, device: str, state, fid_feature=None):
        from snapdistill.metrics.clip_score import load_clip_scorer
        from snapdistill.metrics.hps import load_hps_scorer

        self.config, self.device, self.state = config, device, state
        self.hps = load_hps_scorer(config.hps_checkpoint, config.hps_version, device) if config.hps_checkpoint else None
        self.clip = load_clip_scorer(config.clip_model, config.clip_checkpoint, device) if config.clip_model else None
        self.fid_feature = fid_feature
        self.fid_enabled = bool(config.fid_reference)
        self.mse_reference = read_run(config.mse_reference) if config.mse_reference else None
        self._fid = self._judge = self._real = None

    def fid(self, size: int):
        """The FID scorer with its reference statistics at `size` (cached on disk across runs)."""
        from snapdistill.metrics.fid import FidScorer, reference_files

        if self._fid is None:
            self._fid = (FidScorer.from_feature(self.fid_feature, self.device) if self.fid_feature is not None
                         else FidScorer.inception(self.config.inception_weights, self.device))
        if self._fid.reference is None or self._fid.reference["size"] != size:
            files = reference_files(self.config.fid_reference, self.config.fid_reference_limit)
            cache = self.config.fid_cache or Path.home() / ".cache" / "snapdistill" / "fid"
            self._fid.set_reference(files, size, cache, batch_size=self.config.batch_size,
                                    rank=self.state.process_index, world=self.state.num_processes)
        return self._fid

    @property
    def judge(self):
        if self._judge is None:
            from snapdistill.metrics.toy import load_toy_judge

            self._judge = load_toy_judge(self.device)
        return self._judge

    @property
    def toy_real_features(self) -> np.ndarray:
        if self._real is None:
            from snapdistill.metrics.toy import real_toy_features

            self._real = real_toy_features(self.judge)
        return self._real


def report_row(run: SampleRun, metrics: dict) -> dict:
    """One table row: the run's identity and cost (from its sample manifest) and its metrics."""
    m = run.manifest
    return {
        "label": run.label, "run": str(run.path.resolve()), "model": m["config"].get("model"),
        "steps": run.steps, "guidance": run.guidance, "images": len(run.rows), "sweep": run.sweep,
        "source": sorted(m["config"].get("source", {})),
        "unet_calls_per_image": m.get("metrics", {}).get("unet_calls_per_image"),
        "s_per_image": m.get("metrics", {}).get("s_per_image"),
        "metrics": metrics,
    }


def write_outputs(config: EvalConfig, runs: list[SampleRun], rows: list[dict], scorers: Scorers) -> Path:
    """report.json, report.md and the plots, then the manifest (last)."""
    from snapdistill.evaluation import report
    from snapdistill.metrics.fid import FID_RELIABLE_MIN

    out = Path(config.out)
    body = {
        "hps_version": scorers.hps.version if scorers.hps else None,
        "fid_reliable_min": FID_RELIABLE_MIN,
        "rows": rows,
    }
    grid = [(f"{r.label} · {r.steps} steps", r.path, r.rows) for r in runs if not r.sweep]
    body["plots"] = report.write_plots(rows, grid, out, grid_images=config.grid_images)
    atomic_write_text(out / REPORT_JSON, json.dumps(body, indent=2) + "\n")
    atomic_write_text(out / REPORT_MD, report.markdown(body))
    inputs = [input_entry(r.path, role="sample-run", label=r.label) for r in runs]
    inputs += [input_entry(p, role="included-report") for p in config.include_reports]
    for role, path in (("hps-checkpoint", config.hps_checkpoint), ("clip-checkpoint", config.clip_checkpoint),
                       ("inception-weights", config.inception_weights), ("fid-reference", config.fid_reference),
                       ("mse-reference", config.mse_reference)):
        if path:
            inputs.append(input_entry(path, role=role))
    return write_manifest(
        out, stage="eval", config=asdict(config), inputs=inputs,
        outputs={"report": REPORT_JSON, "table": REPORT_MD, "plots": body["plots"]},
        counts={"runs": len(runs), "rows": len(rows), "images": sum(len(r.rows) for r in runs)},
        metrics={"table": [report.summary(r) for r in rows]},
    )


def inputs(config: EvalConfig) -> dict:
    """What an eval reads, by flag: `--out` must stay apart from all of it."""
    return {"sample-run": config.runs, "--mse-reference": config.mse_reference, "--fid-reference": config.fid_reference,
            "--include-report": config.include_reports, "--hps-checkpoint": config.hps_checkpoint,
            "--clip-checkpoint": config.clip_checkpoint, "--inception-weights": config.inception_weights}


def run(config: EvalConfig, *, fid_feature=None) -> Path:
    """Evaluate `config.runs` (and their guidance sweep) into `config.out`; return the manifest path.

    `fid_feature` replaces the Inception network by any module mapping uint8 images to features.
    """
    from snapdistill.dist import process_state
    from snapdistill.models.loading import default_device
    from snapdistill.outdir import prepare_out

    config.check(fid_feature=fid_feature)
    state = process_state()
    device = config.device or (str(state.device) if state.num_processes > 1 else default_device())
    labels = config.labels or [None] * len(config.runs)
    runs = [read_run(p, label) for p, label in zip(config.runs, labels)]
    included = included_rows(config.include_reports, config.hps_version if config.hps_checkpoint else None)
    out = Path(config.out)
    prepare_out(out, inputs(config), create=state.is_main_process)
    if state.is_main_process:
        (out / MANIFEST).unlink(missing_ok=True)  # the folder is no longer a finished eval
    state.wait_for_everyone()
    scorers = Scorers(config, device, state, fid_feature)
    runs += sweep(runs, config, state) if config.guidance_sweep else []
    rows = [report_row(r, evaluate_run(r, scorers, state, config)) for r in runs]
    if not state.is_main_process:
        return out / MANIFEST
    return write_outputs(config, runs, rows + included, scorers)
