"""`snapdistill merge-shards`: the folders of build-data's `--shard-index` array jobs -> one shard folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snapdistill.cli.app import app
from snapdistill.cli.options import Out


@app.command("merge-shards")
def merge_shards(
    jobs: Annotated[list[Path], typer.Argument(help="The build-data folders of one build's --shard-index jobs.")],
    out: Out = Path("runs/shards-merged"),
) -> None:
    """Copy every job's shards into OUT with one manifest listing them all (sizes, sha256, samples).

    Each shard is hashed as it is copied and refused if it is not the bytes its job recorded; the jobs must share
    every setting but --shard-index. OUT then reads, trains and verifies like one build.

    Examples:

      snapdistill build-data --source laion-art:laion/ --shard-index 0 --num-shards 2 --out data/job-0   # node 0

      snapdistill build-data --source laion-art:laion/ --shard-index 1 --num-shards 2 --out data/job-1   # node 1

      snapdistill merge-shards data/job-0 data/job-1 --out data/laion-art && snapdistill verify data/laion-art
    """
    from snapdistill.data.merge import merge

    manifest = merge(jobs, out)
    typer.echo(f"merged {len(jobs)} jobs into {out} ({manifest})")
