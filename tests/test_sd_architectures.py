"""The real SD 1.5 and SD 2.1 architectures, random-init, at --resolution 64: one optimiser step of each stage and
mode, then `sample` and `eval` on what they wrote. Slow (minutes and ~16 GB of RAM each on 2 cores):
`make test-slow`. The config-only estimate runs in the default suite."""

import json
import shutil

import pytest
from PIL import Image

from snapdistill.models.sd_configs import random_sd_pipeline, save_sd_configs

FAST = ("--max-steps", 1, "--batch-size", 1, "--checkpoint-every", 0, "--ema-decay", 0, "--val-prompts", 1,
        "--resolution", 64, "--mixed-precision", "bf16")


@pytest.mark.parametrize("version, params", [("sd15", 859_520_964), ("sd21", 865_910_724)])
def test_estimate_from_configs_alone(cli, tmp_path, test_shards, version, params):
    folder = save_sd_configs(tmp_path / version, version)
    code, _, err = cli("distill-steps", "--teacher", folder, "--shards", test_shards, "--out", tmp_path / "o",
                       "--resolution", 64, "--dry-run")
    assert code == 0, err
    assert f"student parameters {params:,};" in err and "64 px" in err
    code, _, err = cli("distill-steps", "--teacher", folder, "--shards", test_shards, "--out", tmp_path / "o",
                       "--resolution", 96, "--dry-run")
    assert code == 2 and "--resolution 96 does not fit this teacher: it must be a multiple of 64" in err


@pytest.mark.slow
@pytest.mark.parametrize("version", ["sd15", "sd21"])
def test_one_step_of_each_stage_then_sample_and_eval(cli, tmp_path, test_shards, version):
    teacher = tmp_path / "teacher"
    random_sd_pipeline(version).save_pretrained(teacher)

    def without_checkpoints(*args):
        """Run a stage, then drop its resume checkpoints: an 866M-parameter UNet's (weights, AdamW moments, a
        consistency target) take 10-14 GB each, and the test does not resume."""
        result = cli(*args)
        for folder in tmp_path.glob("*/**/checkpoints"):
            shutil.rmtree(folder)
        return result

    code, _, err = without_checkpoints("distill-guidance", "--teacher", teacher, "--shards", test_shards, "--out",
                                       tmp_path / "g", "--cond-dim", 32, *FAST)
    assert code == 0, err
    runs = {}
    for mode in ("direct", "progressive"):  # consistency below: it takes no --from
        out = tmp_path / mode
        code, _, err = without_checkpoints("distill-steps", "--teacher", tmp_path / "g" / "student", "--shards",
                                           test_shards, "--out", out, "--from", 4, "--to", 2, "--mode", mode, *FAST)
        assert code == 0, err
        assert json.loads((out / "student" / "snapdistill.json").read_text())["resolution"] == 64
        runs[mode] = out
    out = tmp_path / "consistency"
    code, _, err = without_checkpoints("distill-steps", "--teacher", tmp_path / "g" / "student", "--shards",
                                       test_shards, "--out", out, "--to", 2, "--mode", "consistency", *FAST)
    assert code == 0, err
    runs["consistency"] = out
    samples = []
    for name, folder in [("guided", tmp_path / "g"), *runs.items()]:
        s = tmp_path / "samples" / name
        code, _, err = cli("sample", "--teacher", folder / "student", "--prompt", "a red square", "--out", s,
                           *(("--steps", 2) if name == "guided" else ()))
        assert code == 0, err
        assert Image.open(next((s / "images").glob("*.png"))).size == (64, 64)  # the training resolution
        samples.append(s)
    code, _, err = cli("eval", *samples, "--mse-reference", samples[0], "--out", tmp_path / "report")
    assert code == 0, err
    assert (tmp_path / "report" / "report.json").is_file()


@pytest.mark.slow
def test_one_generator_step_of_dmd_on_the_sd15_layout(cli, tmp_path, test_shards):
    """--mode dmd holds two trained UNets (the generator and the fake score, each with AdamW moments): 866M
    parameters each would need ~28 GB, so the generator is the bk-tiny layout here (the fake score is the full
    teacher copy). One generator step with one fake update, then `sample` at the recorded guidance (1)."""
    teacher = tmp_path / "teacher"
    random_sd_pipeline("sd15").save_pretrained(teacher)
    out = tmp_path / "dmd"
    code, _, err = cli("distill-steps", "--mode", "dmd", "--teacher", teacher, "--shards", test_shards, "--out", out,
                       "--fake-updates", 1, "--student-arch", "bk-tiny", *FAST)
    assert code == 0, err
    shutil.rmtree(out / "checkpoints")
    record = json.loads((out / "student" / "snapdistill.json").read_text())
    assert (record["mode"], record["timesteps"], record["guidance"], record["resolution"]) == ("dmd", [999], 1.0, 64)
    s = tmp_path / "samples"
    code, _, err = cli("sample", "--teacher", out / "student", "--prompt", "a red square", "--out", s)
    assert code == 0, err
    manifest = json.loads((s / "manifest.json").read_text())
    assert manifest["metrics"]["unet_calls_per_image"] == 1
    assert Image.open(next((s / "images").glob("*.png"))).size == (64, 64)
