"""What `eval` is asked to do (`EvalConfig`) and the sample folders it reads (`SampleRun`), shared by the stage and its
guidance sweep."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from snapdistill.errors import SnapdistillError
from snapdistill.inventory import check_folder
from snapdistill.manifest import require_manifest
from snapdistill.metrics import image_paths, read_rows


@dataclass
class EvalConfig:
    """Everything `eval` needs; the CLI fills it."""

    runs: list[Path]                                  # sample run folders
    out: Path                                         # report folder
    labels: list[str] | None = None                   # one per run; default: from each run's model
    hps_checkpoint: Path | None = None                # HPS_v2*_compressed.pt
    hps_version: str | None = None                    # v2.0 or v2.1, always explicit
    clip_model: str | None = None                     # open_clip architecture name or JSON config
    clip_checkpoint: Path | None = None
    inception_weights: Path | None = None             # torch-fidelity's FID Inception weights
    fid_reference: Path | None = None                 # folder of reference images (COCO val2017)
    fid_reference_limit: int | None = None
    fid_cache: Path | None = None                     # None: ~/.cache/snapdistill/fid
    toy: bool | None = None                           # judge metrics; None: for runs of toy val prompts
    mse_reference: Path | None = None                 # a sample run of the same prompts and seeds
    guidance_sweep: list[float] | None = None         # re-sample each run at these guidance scales
    sweep_runs: list[Path] | None = None              # only these of `runs` (None: all of them)
    include_reports: list[Path] = field(default_factory=list)  # earlier eval folders whose rows join the table
    grid_images: int = 6                              # columns of the model-comparison grid
    batch_size: int = 32
    device: str | None = None                         # None: cuda when available, else cpu

    def check(self, *, fid_feature=None) -> None:
        """Refuse bad settings before any model loads: missing paths, half-given pairs, HPS version clashes."""
        from snapdistill.metrics.hps import check_version, version_in_filename

        if not self.runs:
            raise SnapdistillError("give at least one sample run folder to evaluate")
        if self.batch_size <= 0:
            raise SnapdistillError(f"--batch-size must be positive, got {self.batch_size}")
        if self.labels and len(self.labels) != len(self.runs):
            raise SnapdistillError(f"{len(self.labels)} --label for {len(self.runs)} runs; give one per run or none")
        _need_file(self.hps_checkpoint, "HPS checkpoint")
        _need_file(self.clip_checkpoint, "CLIP checkpoint")
        _need_file(self.inception_weights, "Inception weights")
        if self.hps_checkpoint and not self.hps_version:
            raise SnapdistillError("--hps-checkpoint needs --hps-version v2.0 or v2.1 (their scores are not comparable)")
        if self.hps_checkpoint:
            check_version(self.hps_version)
            named = version_in_filename(self.hps_checkpoint)
            if named and named != self.hps_version:
                raise SnapdistillError(
                    f"{self.hps_checkpoint}: the file is HPS {named} but --hps-version is {self.hps_version}; "
                    "v2.0 and v2.1 cannot be mixed in one comparison"
                )
        if bool(self.clip_model) != bool(self.clip_checkpoint):
            raise SnapdistillError("CLIP score needs both --clip-model and --clip-checkpoint")
        if bool(self.inception_weights or fid_feature is not None) != bool(self.fid_reference):
            raise SnapdistillError("FID needs both --inception-weights and --fid-reference")
        if self.fid_reference and not Path(self.fid_reference).is_dir():
            raise SnapdistillError(f"{self.fid_reference}: FID reference folder not found (e.g. COCO val2017/)")
        if self.mse_reference:
            require_manifest(self.mse_reference, stage="sample")
        for g in self.guidance_sweep or []:
            if g < 1.0:
                raise SnapdistillError(f"--guidance-sweep values must be >= 1 (1 means no guidance), got {g}")
        if self.sweep_runs and not self.guidance_sweep:
            raise SnapdistillError("--sweep-run needs --guidance-sweep (the scales to re-sample it at)")
        evaluated = {Path(r).resolve() for r in self.runs}
        for folder in self.sweep_runs or []:
            if Path(folder).resolve() not in evaluated:
                raise SnapdistillError(f"{folder}: --sweep-run must be one of the run folders being evaluated")


@dataclass
class SampleRun:
    """One sample folder as eval sees it."""

    path: Path
    manifest: dict
    rows: list[dict]
    label: str
    sweep: bool = False

    @property
    def steps(self) -> int | None:
        return self.manifest["config"].get("steps")

    @property
    def guidance(self) -> float | None:
        return self.manifest["config"].get("guidance")

    @property
    def is_toy(self) -> bool:
        return bool(self.manifest["config"].get("source", {}).get("toy_val"))


def default_label(manifest: dict, folder: Path) -> str:
    """A short model name: the teacher name, or the run folder of a student (`runs/direct8/student` -> direct8)."""
    spec = str(manifest.get("config", {}).get("model") or "")
    if not spec:
        return Path(folder).name
    path = Path(spec)
    return path.parent.name if path.name in ("student", "unet") and path.parent.name else path.name or spec


def read_run(folder: Path, label: str | None = None, *, sweep: bool = False) -> SampleRun:
    """A sample folder with its manifest and rows, refused when any image is missing, or when a file its manifest
    lists is missing or of another size (one line; `snapdistill verify` also compares hashes)."""
    folder = Path(folder)
    manifest = require_manifest(folder, stage="sample")
    problems = check_folder(folder, manifest, quick=True).problems
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SnapdistillError(f"{problems[0]}{more}: the folder changed since it was sampled; sample it again "
                               "(--overwrite), and see `snapdistill verify` for the whole list")
    rows = read_rows(folder)
    image_paths(folder, rows)
    return SampleRun(folder, manifest, rows, label or default_label(manifest, folder), sweep)


def _need_file(path: Path | None, what: str) -> None:
    if path is not None and not Path(path).is_file():
        raise SnapdistillError(f"{path}: {what} not found")
