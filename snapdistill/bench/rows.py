"""The bench's rows: what each samples (model, steps, guidance, scheduler), and where its model is."""

from __future__ import annotations

from pathlib import Path

# name -> (model: "toy" or a run folder under runs/toy, steps (None: the student's own), guidance, scheduler)
ROWS = {
    "teacher16_cfg": ("toy", 16, 7.5, None),
    "teacher16_nocfg": ("toy", 16, 1.0, None),
    "teacher8_cfg": ("toy", 8, 7.5, None),
    "teacher20_cfg": ("toy", 20, 7.5, None),
    "teacher4_cfg": ("toy", 4, 7.5, None),
    # The teacher at the 2- and 1-step students' budgets: 2 DPM++ steps with CFG are 4 UNet calls, 1 step 2 calls.
    "teacher2_cfg": ("toy", 2, 7.5, None),
    "teacher1_cfg": ("toy", 1, 7.5, None),
    "guided8_dpm": ("guided", 8, 7.5, "dpmsolver++"),
    "guided16": ("guided", 16, 7.5, "dpmsolver++"),
    "direct8": ("direct8", None, 7.5, None),
    "direct4": ("direct4", None, 7.5, None),
    # With a guided (stage-1) teacher, one progressive round 16->8 is the direct loss: the same training, so the
    # row samples direct8's student (see NOTES); progressive4 continues from it with one 8->4 round.
    "progressive8": ("direct8", None, 7.5, None),
    "progressive4": ("progressive4", None, 7.5, None),
    # The end of the chain: one 4->2 round from progressive4's student, one 2->1 round from progressive2's.
    "progressive2": ("progressive2", None, 7.5, None),
    "progressive1": ("progressive1", None, 7.5, None),
    "direct8_base": ("direct8-base", None, 7.5, None),
    # Block-removed 16->8 students (BK-SDM), one per --student-arch.
    "arch_bk_base8": ("arch-bk-base8", None, 7.5, None),
    "arch_bk_small8": ("arch-bk-small8", None, 7.5, None),
    "arch_bk_tiny8": ("arch-bk-tiny8", None, 7.5, None),
    # Latent consistency students, each one run sampled by its LCMScheduler at 2, 4 and 8 steps: from the stage-1
    # student, and from the base teacher on the budget of both stages.
    "consistency2": ("consistency", 2, 7.5, None),
    "consistency4": ("consistency", 4, 7.5, None),
    "consistency8": ("consistency", 8, 7.5, None),
    "consistency_base4": ("consistency-base", 4, 7.5, None),
    "consistency_base8": ("consistency-base", 8, 7.5, None),
    # The 1-step generator by distribution matching (--mode dmd) from the base teacher: its guidance is baked in,
    # so it is sampled at guidance 1 (one UNet call per image).
    "dmd1": ("dmd1", None, 1.0, None),
    # Its 2- and 4-step generators (backward simulation; LCMScheduler re-noises between steps), also at guidance 1.
    "dmd2": ("dmd2", None, 1.0, None),
    "dmd4": ("dmd4", None, 1.0, None),
}
# Rows decoded by the small decoder of the `decoder` run (distill-decoder), beside the same model's own rows.
DECODER_ROWS = {
    "direct8_smalldec": ("direct8", None, 7.5, None, "direct8"),
    "teacher16_smalldec": ("toy", 16, 7.5, None, "teacher16_cfg"),
}
DECODER_RUN = "decoder"
REFERENCE = "teacher16_cfg"
NOTES = {
    "progressive8": "the direct8 student: with a teacher that takes w, progressive 16->8 (one round) is the direct "
                    "loss, so the two routes are one training",
    "direct8_base": "SnapFusion's route from the base teacher: unguided student, CFG at sampling (2 UNet rows/step)",
}


def model_path(runs: Path, model: str) -> str | None:
    """The model to sample: the toy teacher, or a finished run's student (None when not built)."""
    if model == "toy":
        return "toy"
    folder = runs / model
    return str(folder / "student") if (folder / "manifest.json").is_file() else None


def fresh_section(module: str, *args: str) -> dict:
    """A bench section measured by `python -m module args...` in a fresh interpreter (the JSON it prints): torch
    threads, compiled graphs and the worker pool's start method carry from one section into the next within a
    process (see `bench_data_fresh`, `speed_sd15_fresh`)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", module, *args], check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout)
