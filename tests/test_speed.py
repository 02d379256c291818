"""Speed: `sample --channels-last` / `--compile`, and the bench's SD 1.5-layout section on a tiny layout."""

import json

import numpy as np
import pytest
from PIL import Image

from snapdistill.sampling import speedups, stage
from snapdistill.sampling.prompts import PromptItem

ITEMS = [PromptItem(i, p) for i, p in enumerate(["a red circle", "a blue square", "a green triangle"])]


def _images(out):
    return np.stack([np.asarray(Image.open(out / "images" / f"{i:05d}-s{i}.png")).astype(int) for i in range(3)])


def test_channels_last_draws_the_same_pictures_and_is_recorded(tmp_path, tiny_eps_dir):
    plain, fast = tmp_path / "plain", tmp_path / "cl"
    stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=plain, steps=3), ITEMS)
    manifest = json.loads(stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=fast, steps=3,
                                                       channels_last=True), ITEMS).read_text())
    assert manifest["config"]["channels_last"] is True and manifest["config"]["compile"] is False
    a, b = _images(plain), _images(fast)
    assert np.abs(a - b).max() <= 1       # other kernels: a grey level at most
    assert np.abs(a[0] - a[1]).max() > 10  # ... while other pictures differ by far more


def test_a_rerun_with_other_speedups_is_refused(tmp_path, tiny_eps_dir):
    out = tmp_path / "run"
    stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=out, steps=2, channels_last=True), ITEMS)
    (out / "images" / "00002-s2.png").unlink()
    with pytest.raises(stage.SnapdistillError, match=r"other settings \(channels_last differ\)"):
        stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=out, steps=2), ITEMS)
    assert not (out / "images" / "00002-s2.png").exists()


def test_compile_without_a_compiler_is_one_line_before_the_model_loads(tmp_path, cli, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(stage, "resolve_model", no_load)
    monkeypatch.setattr(speedups.shutil, "which", lambda name: None)
    code, _, err = cli("sample", "--teacher", "toy", "--prompt", "a", "--compile", "--device", "cpu",
                       "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1, err
    assert "--compile needs torch.compile's inductor backend on cpu: no C++ compiler found" in err
    assert not (tmp_path / "o").exists()


def test_any_cxx_compiler_on_the_path_will_do(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    for found in ("g++", "c++", "clang++"):
        monkeypatch.setattr(speedups.shutil, "which", lambda name, found=found: f"/usr/bin/{name}" if name == found else None)
        assert speedups.compile_problem("cpu") is None
    monkeypatch.setenv("CXX", "my-cxx")
    monkeypatch.setattr(speedups.shutil, "which", lambda name: None)
    assert speedups.compile_problem("cpu") == "no C++ compiler found (my-cxx; set CXX or install g++)"


def test_a_compilation_that_fails_is_one_line():
    BackendCompilerFailed = type("BackendCompilerFailed", (RuntimeError,), {"__module__": "torch._dynamo.exc"})
    error = speedups.compile_failure(BackendCompilerFailed("backend='inductor' raised:\nCppCompileError: ...\n"))
    assert "--compile failed while compiling the pipeline (backend='inductor' raised:); leave --compile out" in str(error)
    assert speedups.compile_failure(ValueError("an ordinary error")) is None


@pytest.mark.slow
def test_compiled_sampling_draws_the_same_pictures(tmp_path, tiny_eps_dir):
    plain, fast = tmp_path / "plain", tmp_path / "compiled"
    stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=plain, steps=3), ITEMS)
    m = json.loads(stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=fast, steps=3, compile=True),
                             ITEMS).read_text())
    assert m["config"]["compile"] is True and m["metrics"]["unet_calls_per_image"] == 6  # hooks still count
    assert np.abs(_images(plain) - _images(fast)).max() <= 1


def test_row_profile_shares_are_each_networks_clocked_seconds_over_the_measured_time():
    from snapdistill.bench.speed_sd15 import row_profile

    spent = {"text_encoder": [2, 0.2], "unet": [16, 32.0], "decoder": [1, 3.0]}
    teacher = row_profile(40.0, spent)
    assert teacher["shares"] == pytest.approx({"text_encoder": 0.2 / 40, "unet": 32 / 40, "decoder": 3 / 40})
    assert teacher["parts_over_measured"] == pytest.approx(35.2 / 40)
    assert teacher["calls"] == {"text_encoder": 2, "unet": 16, "decoder": 1} and teacher["unet_s_per_call"] == 2.0


@pytest.fixture(scope="module")
def tiny_layout():
    from diffusers import StableDiffusionPipeline

    from snapdistill.bench.speed_sd15 import Layout
    from snapdistill.models.tiny import tiny_components
    from snapdistill.models.tiny_sd import tiny_sd_unet

    components = tiny_components(seed=0)
    components["unet"] = tiny_sd_unet(0)
    return Layout(StableDiffusionPipeline(**components), size=32)


def test_the_rows_run_the_networks_they_claim(tiny_layout):
    from snapdistill.bench.speed_sd15 import Layout
    from snapdistill.sampling.render import count_unet_rows

    calls = {}
    for row in Layout.ROWS:
        pipe = tiny_layout.pipeline(row)
        counter, handle = count_unet_rows(pipe.unet)
        tiny_layout.call(row)()
        handle.remove()
        calls[row] = (counter[0], type(pipe.vae).__name__, type(pipe.scheduler).__name__)
    assert calls == {"teacher16_cfg": (32, "AutoencoderKL", "DPMSolverMultistepScheduler"),
                     "direct8": (8, "AutoencoderKL", "DDIMScheduler"),
                     "direct8_kl": (8, "AutoencoderKL", "DDIMScheduler"),
                     "direct8_tiny": (8, "AutoencoderTiny", "DDIMScheduler"),
                     "bk_small8_tiny": (8, "AutoencoderTiny", "DDIMScheduler")}
    small = {name: sum(p.numel() for p in vae.decoder.parameters()) for name, vae in tiny_layout.decoders.items()}
    assert small["tiny"] < small["kl"] < small["full"]
    params = {name: sum(p.numel() for p in unet.parameters()) for name, unet in tiny_layout.unets.items()}
    assert params["bk_small"] < params["teacher"] < params["student"]  # the student adds the guidance input


def test_speed_sd15_section_on_a_tiny_layout(tiny_layout):
    from snapdistill.bench.speed_sd15 import speed_sd15

    out = speed_sd15(rounds=1, part_rounds=1, variants=False, layout=tiny_layout)
    rows = out["rows"]
    assert set(rows) == {"teacher16_cfg", "direct8", "direct8_kl", "direct8_tiny", "bk_small8_tiny"}
    assert out["S"] == rows["teacher16_cfg"]["s_per_image"] / rows["direct8_tiny"]["s_per_image"]
    for name, r in rows.items():
        assert set(r["shares"]) == {"text_encoder", "unet", "decoder"} and all(v > 0 for v in r["shares"].values())
        assert r["parts_over_measured"] == pytest.approx(sum(r["shares"].values()))
        assert r["parts_over_measured"] < 1  # clocked inside the measured call: the networks cannot exceed it
        # the clock saw each network as often as the row runs it (the CFG teacher encodes its negative prompt too)
        cfg = name == "teacher16_cfg"
        assert r["calls"] == {"text_encoder": 2 if cfg else 1, "unet": 16 if cfg else 8, "decoder": 1}
    assert set(out["parts_s"]) == {"text_encoder", "unet_teacher", "unet_student", "unet_bk_small", "decoder_full",
                                   "decoder_kl", "decoder_tiny"}
    assert out["size"] == 32
    pipe = tiny_layout.pipeline("direct8_tiny")
    assert "decode" not in vars(pipe.vae) and not pipe.unet._forward_hooks  # the clock leaves nothing behind


def test_op_profile_names_the_op_that_takes_the_time():
    import torch

    from snapdistill.bench.speed import op_profile

    a = torch.randn(256, 256)
    out = op_profile(lambda: [a @ a for _ in range(20)])
    top = next(iter(out["top"]))
    assert top == "aten::mm" and out["top"][top]["calls"] == 20
    assert 0 < out["top"][top]["share"] <= out["all_ops_share"] <= 1.5
