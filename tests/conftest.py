"""Shared fixtures: tiny random SD-architecture pipelines saved as diffusers folders, and a CLI runner."""

from __future__ import annotations

import sys

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_eps_dir(tmp_path_factory):
    """A tiny random epsilon-prediction SD pipeline folder (32 px, 8x8 latents)."""
    from snapdistill.models.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-eps"), seed=0)


@pytest.fixture(scope="session")
def tiny_v_dir(tmp_path_factory):
    """A tiny random v-prediction (SD 2.x style) pipeline folder."""
    from snapdistill.models.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-v"), seed=1, prediction_type="v_prediction")


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `snapdistill ARGS...` in-process; returns (exit_code, stdout, stderr)."""
    from snapdistill.cli import main

    def run(*args: str):
        monkeypatch.setattr(sys, "argv", ["snapdistill", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
