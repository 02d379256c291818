"""Reading a checkpoint of the training loop back, refusing anything it did not write in one line.

Checkpoints hold tensors and JSON only (safetensors, weights-only torch files, `trainer.json`), and a folder
with any other file is refused unread: `--resume` never unpickles objects, so a checkpoint cannot run code. A file
that does not parse (a tensor file, `trainer.json`, the `latest` pointer) is one line naming it and the way on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from snapdistill.errors import SnapdistillError
from snapdistill.inventory import FolderCheck, compare_file, folder_inventory

CHECKPOINTS = "checkpoints"
LATEST = "latest"
# The files of a checkpoint: tensors and JSON only. Anything else in the folder is refused, not read.
MODEL, OPTIMIZER, EMA, SCALER, TRAINER = "model.safetensors", "optimizer.pt", "ema.pt", "scaler.pt", "trainer.json"
EXTRA = "extra.safetensors"  # the weights of `train`'s `extra_module` (a consistency target, a fake score network)
EXTRA_OPTIMIZER = "extra_optimizer.pt"  # the state of `train`'s `extra_optimizer` (the fake score network's)
FILES = "files.json"  # each other file's size and sha256, recorded when the checkpoint was written
CHECKPOINT_FILES = (MODEL, OPTIMIZER, EMA, SCALER, TRAINER, EXTRA, EXTRA_OPTIMIZER, FILES)
_REMEDY = "resume from the checkpoint before it (--resume RUN/checkpoints/step-N) or start again with --overwrite"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SnapdistillError(f"{pointer}: unreadable ({e.__class__.__name__}); resume from a checkpoint folder "
                               f"(--resume {Path(run_dir) / CHECKPOINTS}/step-N) or start again with --overwrite") from e
    if not name or "/" in name or name.startswith("."):
        raise SnapdistillError(f"{pointer}: names no checkpoint ({name[:40]!r}); resume from a checkpoint folder "
                               f"(--resume {Path(run_dir) / CHECKPOINTS}/step-N) or start again with --overwrite")
    path = Path(run_dir) / CHECKPOINTS / name
    return path if path.is_dir() else None


def check_checkpoint(path: Path) -> Path:
    """Refuse a folder that is not a checkpoint this loop wrote (an unexpected file, or a missing one) before
    anything in it is opened: a pickle placed there is never read."""
    path = Path(path)
    if not path.is_dir():
        raise SnapdistillError(f"{path}: checkpoint folder not found")
    for f in sorted(path.iterdir()):
        if f.name not in CHECKPOINT_FILES or not f.is_file():
            raise SnapdistillError(f"{path}: not a snapdistill checkpoint (unexpected file {f.name}); refusing to load it")
    for name in (MODEL, OPTIMIZER, TRAINER):
        if not (path / name).is_file():
            raise SnapdistillError(f"{path}: not a complete checkpoint (no {name})")
    return path


def trainer_state(path: Path) -> tuple[int, int]:
    """(step, consumed) of a checkpoint's `trainer.json`; one line when it is not the JSON object this loop wrote
    (read before any tensor file is opened)."""
    file = Path(path) / TRAINER
    try:
        state = json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else " ".join(str(e).split())[:120]
        raise SnapdistillError(f"{file}: not a snapdistill checkpoint file ({why}); {_REMEDY}") from e
    if not (isinstance(state, dict) and all(isinstance(state.get(k), int) and state[k] >= 0
                                            for k in ("step", "consumed"))):
        raise SnapdistillError(f"{file}: not a snapdistill checkpoint file (no whole step and consumed counts); {_REMEDY}")
    return state["step"], state["consumed"]


def load_tensors(path: Path, device) -> Any:
    """A torch file of tensors and plain containers, loaded with weights_only=True: no objects are rebuilt, so
    no code in the file can run."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # weights_only refuses any pickled object; a truncated file lands here too
        raise SnapdistillError(f"{path.parent}: not a snapdistill checkpoint ({path.name} does not load as plain "
                               f"tensors: {e.__class__.__name__}); refusing to load it") from e


def load_safetensors(path: Path, name: str, device) -> dict:
    """The tensors of `path/name`, refusing (one line) a file that is missing or not safetensors."""
    from safetensors.torch import load_file

    if not (path / name).is_file():
        raise SnapdistillError(f"{path}: not a complete checkpoint (no {name})")
    try:
        return load_file(path / name, device=str(device))
    except Exception as e:  # not a safetensors file
        raise SnapdistillError(f"{path}: not a snapdistill checkpoint ({name} is not a safetensors file: "
                               f"{e.__class__.__name__}); refusing to load it") from e


def record_files(path: Path) -> None:
    """Write `files.json` into a checkpoint folder whose files are all written: each file's size and sha256 (read
    back once, from the page cache), so `--resume` and `snapdistill verify` can tell a changed file."""
    from snapdistill.manifest import atomic_write_text

    atomic_write_text(Path(path) / FILES, json.dumps(folder_inventory(path), indent=1) + "\n")


def recorded_files(run_dir: Path) -> dict[str, dict]:
    """{path relative to `run_dir`: record} of every checkpoint's recorded files (`files.json`), whose size still
    matches: what the run's manifest may take as known instead of hashing those files a second time."""
    known = {}
    for checkpoint in sorted(Path(run_dir).glob(f"{CHECKPOINTS}/step-*/{FILES}")):
        try:
            files = json.loads(checkpoint.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue  # hashed again by the manifest, as any file
        for name, record in files.items() if isinstance(files, dict) else ():
            path = checkpoint.parent / name
            if isinstance(record, dict) and path.is_file() and path.stat().st_size == record.get("bytes"):
                known[path.relative_to(run_dir).as_posix()] = record
    return known


def recorded_problems(path: Path, *, quick: bool = False, advance=lambda n: None) -> list[str]:
    """How a checkpoint folder differs from its `files.json` (a file missing, of another size or, unless `quick`,
    another sha256; one not recorded); [] when it matches or was written before checkpoints recorded files."""
    path = Path(path)
    if not (path / FILES).is_file():
        return []
    try:
        files = json.loads((path / FILES).read_bytes().decode("utf-8"))
        if not isinstance(files, dict) or not all(isinstance(r, dict) for r in files.values()):
            raise ValueError("not an object of file records")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return [f"{path / FILES}: not a snapdistill checkpoint file ({' '.join(str(e).split())[:100]})"]
    problems = []
    for name, record in files.items():
        f = path / name
        found = ("missing", 0) if "/" in name else compare_file(f, record, quick=quick, advance=advance)
        if found is None:
            continue
        how, size = found
        problems.append(f"{f}: missing" if how == "missing" else
                        f"{f}: {size} bytes, {record.get('bytes')} when the checkpoint was written" if how == "size"
                        else f"{f}: sha256 differs from the one recorded when the checkpoint was written")
    problems += [f"{f}: not recorded when the checkpoint was written" for f in sorted(path.iterdir())
                 if f.name != FILES and f.name not in files]
    return problems


def check_recorded(path: Path) -> None:
    """Refuse, in one line, a checkpoint whose files differ from those recorded when it was written."""
    problems = recorded_problems(path)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SnapdistillError(f"{problems[0]}{more}; {_REMEDY}")


def check_run_checkpoints(run_dir: Path, *, quick: bool = False, advance=lambda n: None) -> FolderCheck:
    """`snapdistill verify` of a training run without its manifest (stopped, or still training): each checkpoint
    against the files.json it recorded when it was written."""
    result = FolderCheck(Path(run_dir), "run (no manifest yet)")
    for checkpoint in sorted(p for p in (Path(run_dir) / CHECKPOINTS).glob("step-*") if p.is_dir()):
        files = [f for f in checkpoint.iterdir() if f.is_file()]
        result.files += len(files)
        result.bytes += sum(f.stat().st_size for f in files)
        if not (checkpoint / FILES).is_file():
            result.unchecked = "checkpoints written before they recorded their files: cannot be checked"
        result.problems += recorded_problems(checkpoint, quick=quick, advance=advance)
    return result
