"""Errors that the CLI turns into one line on stderr and exit code 2."""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path


class SnapdistillError(Exception):
    """A known failure caused by the user's input or environment (bad path, missing weights...).

    The message is shown as-is on one line, so it should say what is wrong and how to fix it.
    """

    exit_code = 2


# The write failures a user fixes on their side: a full disk, a quota, a file-size limit, a read-only or
# foreign folder. Everything a stage writes goes through temporary files and renames, so a rerun after the fix
# continues (or restarts) cleanly; the CLI reports these in one line instead of a traceback.
FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file size limit reached"}
DENIED = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted"}
# torch.save reports a failed write from its C++ writer as a RuntimeError without an errno; safetensors' Rust
# writer as a SafetensorError whose message carries it ("I/O error: ... (os error 28)").
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _free(folder: Path | None) -> str:
    """'N MB free in FOLDER', from the nearest existing parent of `folder` ('' when unknown)."""
    if folder is None:
        return ""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f"{free / 2**20:.1f} MB free in {folder}"


def storage_message(exc: BaseException, out: Path | None = None) -> str | None:
    """One line for a failed write (disk full, quota, size limit, read-only or denied folder) anywhere in
    `exc`'s chain, naming the file (or the stage's output folder `out`) and the space left; None for any
    other error."""
    for e in _chain(exc):
        code, filename = (e.errno, e.filename) if isinstance(e, OSError) else (None, None)
        if code is None and (found := _OS_ERROR_IN_TEXT.search(str(e))):
            code = int(found.group(1))
        if code in FULL or code in DENIED:
            where = filename or out or "the output folder"
            if code in FULL:
                free = _free(Path(filename).parent if filename else out)
                return (f"{where}: {FULL[code]}{f' ({free})' if free else ''}; free some space there or choose "
                        f"another --out, then rerun (finished parts are kept)")
            return f"{where}: cannot write ({DENIED[code]}); choose a writable --out"
        if isinstance(e, RuntimeError) and any(s in str(e) for s in _TORCH_WRITE_FAILED):
            free = _free(out)
            return (f"{out or 'the output folder'}: a file write failed (the disk is probably full"
                    f"{f'; {free}' if free else ''}); free some space there or choose another --out, then rerun")
    return None
