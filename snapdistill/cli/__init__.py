"""The `snapdistill` command: a thin Typer layer (parse -> config -> `stage.run(config)`).

One file per command; each registers itself on `app` (`cli/app.py`) when imported. Known errors
(`SnapdistillError`) become one line on stderr and exit code 2; set SNAPDISTILL_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import os
import sys

from snapdistill.cli.app import app
from snapdistill.errors import SnapdistillError, storage_message


def _register() -> None:
    # Commands register themselves on import; only working commands are listed here.
    from snapdistill.cli import (  # noqa: F401
        build_data,
        cache_latents,
        decoder,
        distill,
        eval,
        inspect_cmd,
        merge,
        recaption,
        sample,
        toy,
        verify,
    )


_register()


def main() -> None:
    """Entry point: run the app, turning known errors (and failed writes: a full disk, a read-only folder) into
    one line and exit code 2."""
    try:
        app()  # standalone: click reports usage errors itself (exit 2)
    except SnapdistillError as e:
        if os.environ.get("SNAPDISTILL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a failed write
        from snapdistill.outdir import prepared

        message = storage_message(e, prepared[-1] if prepared else None)
        if message is None or os.environ.get("SNAPDISTILL_DEBUG"):
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(SnapdistillError.exit_code)
