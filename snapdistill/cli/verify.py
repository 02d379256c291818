"""`snapdistill verify FOLDER...`: check stage folders against the files their manifests list."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from snapdistill.cli.app import app


@app.command()
def verify(
    folders: Annotated[list[Path], typer.Argument(
        help="Stage folders (shards, runs, sample folders, reports), or folders holding them (searched below).")],
    quick: Annotated[bool, typer.Option("--quick", help="Check that each file is there at its size; no hashing.")] = False,
) -> None:
    """Check every file each folder's manifest lists: present, of its size and (unless --quick) its sha256.

    Prints a table; exits 0 when everything matches, 1 naming each mismatch (a missing, cut or changed file).
    A folder written before manifests listed their files is reported as unchecked. Files that are there but not
    listed are named, and do not fail the check (readers do not read them). A training run without its manifest
    yet has its checkpoints checked against the files.json each recorded when it was written.

    Examples:

      snapdistill verify runs/toy/shards runs/toy/shards-clean

      snapdistill verify runs/repro/toy            # every stage folder below it

      snapdistill verify --quick data/laion-art/job-*   # the folders of --shard-index array jobs

      snapdistill verify runs/direct8              # a run still training: its checkpoints
    """
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from snapdistill.distill.checkpoint_files import CHECKPOINTS, check_run_checkpoints
    from snapdistill.errors import SnapdistillError
    from snapdistill.inventory import check_folder, stage_folders
    from snapdistill.manifest import MANIFEST, require_manifest

    def under_way(path: Path) -> bool:  # a training run without its manifest yet: its checkpoints are checked
        return (path / CHECKPOINTS).is_dir()

    found = []
    for folder in folders:
        if not folder.exists():
            raise SnapdistillError(f"{folder}: not found; give a stage folder (one with a manifest.json)")
        below = stage_folders(folder, under_way)
        if not below:
            raise SnapdistillError(f"{folder}: no manifest.json there or below; give a folder a snapdistill stage wrote")
        found.extend(below)
    manifests = [(f, require_manifest(f) if (f / MANIFEST).is_file() else None) for f in found]
    total = 0 if quick else sum(int(r.get("bytes", 0)) for _, m in manifests if m
                                for r in (m.get("files") or {}).values() if isinstance(r, dict))
    err = Console(stderr=True)
    checks = []
    with Progress(TextColumn("verify"), BarColumn(), DownloadColumn(), TimeRemainingColumn(), console=err,
                  transient=True, disable=quick or not err.is_terminal) as bar:
        task = bar.add_task("hash", total=total)
        for folder, manifest in manifests:
            advance = lambda n: bar.advance(task, n)  # noqa: E731
            checks.append(check_folder(folder, manifest, quick=quick, advance=advance) if manifest is not None
                          else check_run_checkpoints(folder, quick=quick, advance=advance))

    table = Table("folder", "stage", "files", "MB", "status", box=None, pad_edge=False)
    for c in checks:
        status = ("unchecked" if c.unchecked else "ok" if not c.problems
                  else f"{len(c.problems)} mismatch{'es' if len(c.problems) > 1 else ''}")
        table.add_row(str(c.folder), c.stage, str(c.files), f"{c.bytes / 2**20:.1f}", status)
    out = Console(width=200, soft_wrap=True)
    out.print(table)
    for c in checks:
        if c.unchecked:
            out.print(f"unchecked: {c.folder}: {c.unchecked}")
        for path in c.extra:
            out.print(f"not listed: {path} (not in the manifest; readers do not read it)")
    problems = [p for c in checks for p in c.problems]
    for problem in problems:
        print(f"mismatch: {problem}", file=sys.stderr)
    how = "sizes" if quick else "sizes and sha256"
    if problems:
        print(f"verify: {len(problems)} mismatch{'es' if len(problems) > 1 else ''} in "
              f"{sum(bool(c.problems) for c in checks)} of {len(checks)} folders ({how})", file=sys.stderr)
        raise typer.Exit(1)
    typer.echo(f"verify: {len(checks)} folder{'s match their manifests' if len(checks) > 1 else ' matches its manifest'}"
               f" ({how})"
               + (f"; {sum(bool(c.unchecked) for c in checks)} unchecked" if any(c.unchecked for c in checks) else ""))

