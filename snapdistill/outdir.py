"""Output folders of the stages: refused when they overlap an input, then created and proven writable.

Every stage prepares its `--out` here, so an `--out` equal to an input, containing one or inside one is
refused in the same words everywhere, before anything is deleted or written: `--overwrite` clears `--out`,
and a stage writing into its own input folder would change what it reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from snapdistill.errors import SnapdistillError

# An input: one path, several (a repeatable flag), or None (not given).
Inputs = Mapping[str, Path | str | Iterable[Path | str] | None]

# The folders this process prepared, newest last: a write that fails without naming its file (a full disk met
# inside a tar or torch writer) is reported against the stage's output folder.
prepared: list[Path] = []


def _paths(value) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value if v is not None]


def check_out_apart(out: Path, inputs: Inputs, *, flag: str = "--out") -> None:
    """Refuse an `out` that is, contains or lies inside one of `inputs` ({flag or name: path(s)}).

    Paths are compared resolved (symlinks followed), so another spelling of the same folder is caught too.
    """
    out = Path(out)
    here = out.expanduser().resolve()
    for name, value in inputs.items():
        for path in _paths(value):
            there = path.expanduser().resolve()
            if here == there:
                how = "is"
            elif here in there.parents:
                how = "contains"
            elif there in here.parents:
                how = "lies inside"
            else:
                continue
            raise SnapdistillError(f"{flag} {out} {how} the {name} input {path}; choose an {flag} outside every input")


def prepare_out(out: Path, inputs: Inputs | None = None, *, flag: str = "--out", create: bool = True) -> Path:
    """Check `out` against `inputs`, then (when `create`) make it and prove it writable; one-line errors.

    Stages run by several processes pass `create=` only on the main one, but check on all of them: the check
    gives the same answer everywhere, so no process is left waiting at a barrier for one that stopped.
    """
    out = Path(out)
    check_out_apart(out, inputs or {}, flag=flag)
    if create:
        if out.exists() and not out.is_dir():
            raise SnapdistillError(f"{out}: is a file, not a folder; choose another {flag}")
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise SnapdistillError(f"{out}: output folder is not writable ({e.strerror or e}); choose another {flag}") from e
    prepared.append(out)
    return out
