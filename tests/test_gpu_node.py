"""Settings for real training nodes (issue 14): --resolution, --val-prompts, frozen parts in the mixed-precision
dtype, --optimizer, --report-to. Each runs on a tiny random pipeline on the CPU."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from snapdistill.distill import guidance_stage, stage, tracking
from snapdistill.distill.loop import TrainConfig
from snapdistill.distill.stage import CommonConfig
from snapdistill.errors import SnapdistillError


def _common(teacher, shards, out, *, train=None, **kw):
    train = TrainConfig(**{"max_steps": 1, "batch_size": 2, "checkpoint_every": 0, "ema_decay": 0, **(train or {})})
    return CommonConfig(teacher=str(teacher), shards=shards, out=out, train=train, **kw)


def _guidance(common):
    return guidance_stage.GuidanceConfig(common=common, cond_dim=16, val_steps=2)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, tiny_eps_dir, test_shards):
    """distill-guidance at --resolution 16, 2 val prompts, bf16: the teacher seen by the loss is kept."""
    out = tmp_path_factory.mktemp("bf16") / "run"
    seen = {}
    load = stage.load_teacher

    def keep(common):
        seen["teacher"] = load(common)
        return seen["teacher"]

    from accelerate.state import AcceleratorState

    mp = pytest.MonkeyPatch()
    mp.setattr(guidance_stage, "load_teacher", keep)
    AcceleratorState._reset_state(True)  # accelerate fixes mixed precision once per process
    try:
        guidance_stage.run(_guidance(_common(tiny_eps_dir, test_shards, out, resolution=16, val_prompts=2,
                                             train={"mixed_precision": "bf16"})))
    finally:
        mp.undo()
        AcceleratorState._reset_state(True)
    return out, seen["teacher"]


def test_resolution_sets_training_validation_and_student_size(bf16_run, capfd):
    out, _ = bf16_run
    grid = np.asarray(Image.open(out / "val" / "step-0000001.png"))
    assert grid.shape == (2 * 16, 2 * 16, 3)  # teacher row over student row, 2 prompts, 16 px each
    record = json.loads((out / "student" / "snapdistill.json").read_text())
    assert record["resolution"] == 16
    unet = json.loads((out / "student" / "unet" / "config.json").read_text())
    assert unet["sample_size"] == 16 // 4  # the tiny VAE halves twice
    config = json.loads((out / "config.json").read_text())
    assert config["common"]["resolution"] == 16 and config["common"]["val_prompts"] == 2


def test_sample_defaults_to_the_training_resolution(bf16_run, tmp_path):
    from snapdistill.sampling import stage as sample
    from snapdistill.sampling.prompts import PromptItem

    out, _ = bf16_run
    sample.run(sample.SampleConfig(model=str(out / "student"), out=tmp_path / "s", steps=2),
               [PromptItem(0, "a red square")])
    image = next((tmp_path / "s" / "images").glob("*.png"))
    assert Image.open(image).size == (16, 16)


def test_frozen_parts_in_bf16_student_in_fp32(bf16_run):
    from safetensors.torch import load_file

    out, teacher = bf16_run
    pipe = teacher.pipe
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.bfloat16}
    weights = load_file(out / "student" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}
    assert np.isfinite(json.loads((out / "stats.jsonl").read_text().splitlines()[0])["loss"])


def test_val_prompts_zero_renders_nothing(tmp_path, tiny_eps_dir, test_shards, capfd):
    out = tmp_path / "run"
    guidance_stage.run(_guidance(_common(tiny_eps_dir, test_shards, out, val_prompts=0)))
    assert not (out / "val").exists()
    assert "validation:" not in capfd.readouterr().err
    assert "val" not in json.loads((out / "manifest.json").read_text())["outputs"]


def test_validation_rows_are_timed_in_the_log(tmp_path, tiny_eps_dir, test_shards, capfd):
    guidance_stage.run(_guidance(_common(tiny_eps_dir, test_shards, tmp_path / "run", val_prompts=1)))
    err = capfd.readouterr().err
    assert "validation: teacher reference row, 1 prompts x 2 steps at 32 px:" in err
    assert "validation: student (step 1) row, 1 prompts x 2 steps at 32 px:" in err


@pytest.mark.parametrize("flags, message", [
    (("--resolution", "0"), "--resolution must be a positive integer, got 0"),
    (("--resolution", "36"), "--resolution 36 does not fit this teacher: it must be a multiple of 8"),
    (("--val-prompts", "-1"), "--val-prompts must be an integer >= 0"),
    (("--optimizer", "sgd"), "unknown --optimizer 'sgd'; choose one of adamw, adamw8bit"),
    (("--report-to", "comet"), "unknown --report-to 'comet'; choose one of none, tensorboard, wandb"),
    (("--mixed-precision", "fp8"), "unknown --mixed-precision 'fp8'"),
])
@pytest.mark.parametrize("command", ["distill-guidance", "distill-steps"])
def test_bad_values_are_one_line_errors_before_weights_load(cli, tmp_path, tiny_eps_dir, test_shards, monkeypatch,
                                                            command, flags, message):
    def no_load(*a, **k):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(stage, "load_pipeline", no_load)
    code, _, err = cli(command, "--teacher", tiny_eps_dir, "--shards", test_shards, "--out", tmp_path / "o", *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_adamw8bit_needs_bitsandbytes_and_cuda(monkeypatch):
    import importlib.util

    from snapdistill.distill import optim

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(SnapdistillError, match="adamw8bit needs bitsandbytes: pip install"):
        TrainConfig(optimizer="adamw8bit").check()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SnapdistillError, match="adamw8bit needs a CUDA device"):
        optim.check_optimizer("adamw8bit")
    from snapdistill.models.memory import STATE_BYTES

    assert STATE_BYTES["adamw8bit"] * 4 == STATE_BYTES["adamw"]


def test_report_to_names_the_missing_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(SnapdistillError, match=r"--report-to tensorboard needs the tensorboard package"):
        TrainConfig(report_to="tensorboard").check()


def test_trackers_get_the_rows_and_the_grids(tmp_path, tiny_eps_dir, test_shards, monkeypatch):
    """Through accelerate's tracker API: a GeneralTracker stands in for tensorboard/wandb."""
    from accelerate.tracking import GeneralTracker

    calls = {"init": None, "log": [], "images": [], "finished": False}

    class Recorder(GeneralTracker):
        name, requires_logging_directory, main_process_only = "recorder", False, True

        def __init__(self):
            super().__init__()

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            calls["init"] = values

        def log(self, values, step=None, **kwargs):
            calls["log"].append((step, values))

        def log_images(self, values, step=None, **kwargs):
            calls["images"].append((step, values["val"][0].shape))

        def finish(self):
            calls["finished"] = True

    monkeypatch.setattr(tracking, "log_with", lambda name: [Recorder()])
    guidance_stage.run(_guidance(_common(tiny_eps_dir, test_shards, tmp_path / "run", val_prompts=1,
                                         train={"max_steps": 2, "validate_every": 1})))
    assert calls["init"]["max_steps"] == 2 and calls["init"]["lr"] > 0
    assert [s for s, _ in calls["log"]] == [1, 2]
    assert set(calls["log"][1][1]) == {"loss", "lr", "grad_norm", "samples_per_s"}
    assert calls["images"] == [(1, (64, 32, 3)), (2, (64, 32, 3)), (2, (64, 32, 3))]  # the last: EMA weights, at the end
    assert calls["finished"]
