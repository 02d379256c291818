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
Device = Annotated[str | None, typer.Option("--device", help="cuda, cuda:1, cpu... [default: cuda if available]")]
AllowDownload = Annotated[
    bool, typer.Option("--allow-download", help="Let a known teacher name download from the Hugging Face hub.")
]
Seed = Annotated[int, typer.Option("--seed", help="Base seed: prompt index i uses seed + i.")]
