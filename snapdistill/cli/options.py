"""Option aliases shared by the commands, so each flag reads and behaves the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Teacher = Annotated[
    str,
    typer.Option("--teacher", "--model", "-m",
                 help="toy, sd15, sd21, sd21-base, a diffusers pipeline folder, or a .safetensors/.ckpt file."),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
Dtype = Annotated[str, typer.Option("--dtype", help="fp32, fp16 (GPU only) or bf16.")]
Device = Annotated[str | None, typer.Option("--device", help="cuda, cuda:1, cpu... \\[default: cuda if available]")]
AllowDownload = Annotated[
    bool, typer.Option("--allow-download", help="Let a known teacher name download from the Hugging Face hub.")
]
Seed = Annotated[int, typer.Option("--seed", help="Base seed: prompt index i uses seed + i.")]
AllowLost = Annotated[bool, typer.Option(
    "--allow-lost-samples", help="Go on when an input shard is missing or holds fewer samples than its manifest "
                                 "lists (else one line, exit 2); the manifest records, per shard, what was expected "
                                 "and what was read.")]

# Training options shared by distill-guidance and distill-steps.
Shards = Annotated[Path, typer.Option("--shards", help="A build-data (or recaption) output folder.")]
MaxSteps = Annotated[int, typer.Option("--max-steps", help="Optimisation steps.")]
MaxMinutes = Annotated[float | None, typer.Option("--max-minutes", help="Stop (and checkpoint) after this many minutes.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Samples per process and micro-step.")]
GradAccum = Annotated[int, typer.Option("--grad-accum", help="Micro-steps per optimisation step.")]
LearningRate = Annotated[float | None, typer.Option(
    "--lr", help="AdamW peak learning rate (warm-up, then cosine). Default: 3e-4 for a UNet up to 100M parameters "
                 "(the toy world's winner), 1e-5 above (SD scale).")]
Warmup = Annotated[int, typer.Option("--warmup-steps", help="Linear warm-up steps.")]
EmaDecay = Annotated[float, typer.Option("--ema-decay", help="EMA decay ceiling; 0 disables EMA.")]
MixedPrecision = Annotated[str, typer.Option("--mixed-precision", help="no, fp16 or bf16.")]
GradCheckpointing = Annotated[bool, typer.Option("--gradient-checkpointing", help="Trade compute for memory.")]
CheckpointEvery = Annotated[int, typer.Option("--checkpoint-every", help="Steps between resume checkpoints.")]
ValidateEvery = Annotated[int, typer.Option("--validate-every", help="Steps between validation grids (0: at the end).")]
StudentPrediction = Annotated[str, typer.Option(
    "--student-prediction", help="auto (v_prediction for a 1-step student, whose one step starts at t = 999 where "
                                 "eps -> x0 amplifies error ~15x; else the teacher's), same (the "
                                 "teacher's), or v_prediction (SnapFusion's switch).")]
StudentArch = Annotated[
    str, typer.Option("--student-arch", help="same, or a block-removed student (BK-SDM): bk-base, bk-small, bk-tiny.")
]
FeatWeight = Annotated[
    float | None,
    typer.Option("--feat-weight", help="Weight of the feature loss on block outputs (default: 1 with a block-removed student, else 0)."),
]
OutWeight = Annotated[float, typer.Option("--out-weight", help="Weight of the output-level loss.")]
CaptionDropout = Annotated[float, typer.Option("--caption-dropout", help="Share of empty captions in training batches.")]
Resume = Annotated[str | None, typer.Option("--resume", help="'latest' or a checkpoint folder of this run.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a finished or unfinished run in --out.")]
Resolution = Annotated[int | None, typer.Option(
    "--resolution", help="Training image side (a multiple of VAE factor x 2^(UNet down blocks - 1): 64 for SD). "
                         "Validation, the student's defaults and `sample` follow it. \\[default: the teacher's native size]")]
ValPrompts = Annotated[int, typer.Option("--val-prompts", help="Rows of the validation grids (0: no grids).")]
Optimizer = Annotated[str, typer.Option("--optimizer", help="adamw, or adamw8bit (bitsandbytes, CUDA only).")]
ReportTo = Annotated[str, typer.Option("--report-to", help="none, tensorboard (to RUN/logs) or wandb.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and a memory estimate, and exit.")]


def parse_range(text: str, flag: str) -> tuple[float, float]:
    """'2-14' or '2,14' -> (2.0, 14.0), with a one-line error naming the flag."""
    from snapdistill.errors import SnapdistillError

    parts = text.replace(",", "-").split("-")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise SnapdistillError(f"{flag} expects LOW-HIGH (e.g. 2-14), got '{text}'") from None
    return lo, hi
