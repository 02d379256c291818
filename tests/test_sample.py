import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from snapdistill.models.loading import load_pipeline, resolve_model
from snapdistill.sampling import render, stage
from snapdistill.sampling.prompts import PromptItem
from snapdistill.sampling.schedulers import make_scheduler

PROMPTS = ["a red circle on the left", "a blue square at the top", "a green triangle", "a yellow circle"]


def _items(prompts=PROMPTS):
    return [PromptItem(i, p) for i, p in enumerate(prompts)]


def _with_sched(folder):
    p = load_pipeline(resolve_model(str(folder)))
    p.scheduler = make_scheduler("dpmsolver++", p.scheduler.config, spacing="trailing")
    return p


@pytest.fixture(scope="module")
def pipe(tiny_eps_dir):
    return _with_sched(tiny_eps_dir)


def test_image_depends_only_on_prompt_and_seed(pipe):
    kw = dict(steps=4, guidance=7.5, size=32)
    together = render.generate(pipe, PROMPTS[:3], [10, 11, 12], **kw)
    alone = np.concatenate([render.generate(pipe, [p], [s], **kw) for p, s in zip(PROMPTS[:3], [10, 11, 12])])
    shuffled = render.generate(pipe, [PROMPTS[2], PROMPTS[0]], [12, 10], **kw)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(shuffled, together[[2, 0]], atol=1e-5)
    # ...and the seed does matter.
    other_seed = render.generate(pipe, PROMPTS[:1], [99], **kw)
    assert np.abs(other_seed - together[:1]).max() > 1e-2


def test_drop_in_stock_diffusers_gives_same_images(tmp_path, tiny_eps_dir, cli):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    code, _, err = cli("sample", "--teacher", tiny_eps_dir, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
                       "--steps", 5, "--seed", 3, "--out", tmp_path / "o")
    assert code == 0, err
    stock = StableDiffusionPipeline.from_pretrained(tiny_eps_dir)
    stock.scheduler = DPMSolverMultistepScheduler.from_config(
        stock.scheduler.config, algorithm_type="dpmsolver++", timestep_spacing="trailing")
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    ref = stock(PROMPTS[:2], num_inference_steps=5, guidance_scale=7.5, generator=gens, output_type="np",
                height=32, width=32).images
    ours = render.generate(_with_sched(tiny_eps_dir), PROMPTS[:2], [3, 4], steps=5, guidance=7.5, size=32)
    assert np.abs(ours - ref).max() < 1e-4
    saved = [np.asarray(Image.open(tmp_path / "o" / "images" / f"{i:05d}-s{3 + i}.png")) for i in range(2)]
    np.testing.assert_array_equal(np.stack(saved), render.to_uint8(ref))


def test_outputs_manifest_and_rerun(tmp_path, tiny_eps_dir):
    out = tmp_path / "run"
    cfg = stage.SampleConfig(model=str(tiny_eps_dir), out=out, steps=3, batch_size=3, seed=5)
    stage.run(cfg, _items())
    files = sorted(p.name for p in (out / "images").iterdir())
    assert files == ["00000-s5.png", "00001-s6.png", "00002-s7.png", "00003-s8.png"]
    rows = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert [(r["index"], r["seed"], r["prompt"]) for r in rows] == [(i, 5 + i, p) for i, p in enumerate(PROMPTS)]
    assert Image.open(out / "grid.png").size == (4 * 32, 32)
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "sample" and m["counts"]["images"] == 4
    assert m["config"]["model_path"] == str(tiny_eps_dir.resolve())
    assert m["config"]["scheduler"]["class"] == "DPMSolverMultistepScheduler"
    assert m["config"]["scheduler"]["timestep_spacing"] == "trailing"
    assert (m["config"]["steps"], m["config"]["guidance"]) == (3, 7.5)
    assert m["metrics"]["unet_calls_per_image"] == 6  # CFG doubles the batch: 2 rows per step

    # Rerun: nothing is redrawn; one deleted image is filled back identically.
    first = (out / "images" / "00001-s6.png").read_bytes()
    os.utime(out / "images" / "00000-s5.png", (1, 1))
    (out / "images" / "00001-s6.png").unlink()
    stage.run(cfg, _items())
    m2 = json.loads((out / "manifest.json").read_text())
    assert (m2["counts"]["rendered_now"], m2["counts"]["skipped_present"]) == (1, 3)
    assert (out / "images" / "00000-s5.png").stat().st_mtime == 1
    assert (out / "images" / "00001-s6.png").read_bytes() == first
    # A rerun with nothing left to draw keeps the measured costs of the run that drew the images.
    m3 = json.loads(stage.run(cfg, _items()).read_text())
    assert m3["counts"]["rendered_now"] == 0 and m3["metrics"]["unet_calls_per_image"] == 6


def test_rerun_with_other_settings_is_refused(tmp_path, tiny_eps_dir):
    out = tmp_path / "run"
    stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=out, steps=2), _items()[:1])
    with pytest.raises(stage.SnapdistillError, match="guidance differ"):
        stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=out, steps=2, guidance=3.0), _items()[:1])


def test_a_model_retrained_in_place_is_not_mistaken_for_the_old_one(tmp_path, tiny_eps_dir):
    """Same path, same settings, other weights: the old images are refused, or replaced with --overwrite."""
    import shutil

    from diffusers import UNet2DConditionModel

    model, out = tmp_path / "model", tmp_path / "run"
    shutil.copytree(tiny_eps_dir, model)
    stage.run(stage.SampleConfig(model=str(model), out=out, steps=2), _items()[:1])
    before = (out / "images" / "00000-s0.png").read_bytes()
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    with torch.no_grad():
        unet.conv_out.bias.add_(0.5)
    unet.save_pretrained(model / "unet")
    with pytest.raises(stage.SnapdistillError, match="model_fingerprint differ.*--overwrite"):
        stage.run(stage.SampleConfig(model=str(model), out=out, steps=2), _items()[:1])
    m = json.loads(stage.run(stage.SampleConfig(model=str(model), out=out, steps=2, overwrite=True),
                             _items()[:1]).read_text())
    assert m["counts"]["rendered_now"] == 1
    assert (out / "images" / "00000-s0.png").read_bytes() != before


def test_no_cfg_means_one_call_per_step(tmp_path, tiny_eps_dir):
    m = stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=tmp_path / "g1", steps=4, guidance=1.0),
                  _items()[:2])
    assert json.loads(m.read_text())["metrics"]["unet_calls_per_image"] == 4


def test_hps_style_layout(tmp_path, tiny_eps_dir):
    items = [PromptItem(0, "a", "anime"), PromptItem(1, "b", "anime"), PromptItem(0, "c", "photo")]
    stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=tmp_path / "h", steps=2), items)
    assert sorted(str(p.relative_to(tmp_path / "h" / "images")) for p in (tmp_path / "h" / "images").rglob("*.jpg")) \
        == ["anime/00000.jpg", "anime/00001.jpg", "photo/00000.jpg"]


def _ddim_student(folder, record, **kw):
    """A tiny pipeline folder saved as the stages save a student: trailing DDIM, and its record."""
    from diffusers import DDIMScheduler

    from snapdistill.models.tiny import save_tiny_pipeline

    folder = save_tiny_pipeline(folder, **kw)
    sched = DDIMScheduler.from_pretrained(folder / "scheduler")
    DDIMScheduler.from_config(sched.config, timestep_spacing="trailing").save_pretrained(folder / "scheduler")
    record.write(folder)
    return folder


def test_student_folder_uses_its_recorded_steps_and_scheduler(tmp_path):
    """A guidance-conditioned student: its own scheduler and step count, one UNet row per image per step."""
    from snapdistill.models.student_record import StudentRecord

    folder = _ddim_student(tmp_path / "student", StudentRecord(num_inference_steps=3), time_cond_proj_dim=32)
    m = json.loads(stage.run(stage.SampleConfig(model=str(folder), out=tmp_path / "s"), _items()[:2]).read_text())
    assert m["config"]["steps"] == 3
    assert m["config"]["scheduler"]["name"] == "own" and m["config"]["scheduler"]["class"] == "DDIMScheduler"
    assert m["metrics"]["unet_calls_per_image"] == 3


@pytest.mark.parametrize("args, message", [
    (["--teacher", "sd9"], "unknown teacher 'sd9'; known names"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--prompts", "EMPTY"], "no prompts found"),
    (["--coco", "NOANN"], "no 'annotations'"),
    (["--hps-benchmark", "HPS"], "HPSv2 style file missing"),
])
def test_bad_input_one_line_exit_2(tmp_path, tiny_eps_dir, cli, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "noann.json").write_text(json.dumps({"images": []}))
    (tmp_path / "hps").mkdir()
    subst = {"EMPTY": tmp_path / "empty.txt", "NOANN": tmp_path / "noann.json", "HPS": tmp_path / "hps"}
    args = [str(subst.get(a, a)) for a in args]
    if "--teacher" not in args:
        args += ["--teacher", str(tiny_eps_dir)]
    if not any(a in args for a in ("--prompts", "--coco", "--hps-benchmark")):
        args += ["--prompt", "x"]
    code, _, err = cli("sample", *args, "--out", tmp_path / "out")
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_unwritable_out(tmp_path, tiny_eps_dir, cli):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = cli("sample", "--teacher", tiny_eps_dir, "--prompt", "x", "--out", blocker / "sub")
    assert code == 2 and "output folder is not writable" in err


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("out_at, how", [("model", "is"), ("model/samples", "lies inside"), (".", "contains")])
def test_out_overlapping_the_model_is_refused_and_nothing_is_written(tmp_path, tiny_eps_dir, cli, out_at, how):
    import shutil

    model = shutil.copytree(tiny_eps_dir, tmp_path / "model")
    before = _files(model)
    out = tmp_path / out_at
    code, _, err = cli("sample", "--teacher", model, "--prompt", "x", "--steps", 1, "--out", out, "--overwrite")
    assert code == 2 and err.count("\n") == 1, err
    assert f"--out {out} {how} the --teacher input {model}; choose an --out outside every input" in err
    assert _files(model) == before and not (tmp_path / "images").exists()


def test_out_through_a_symlink_to_the_model_is_refused(tmp_path, tiny_eps_dir, cli):
    import shutil

    model = shutil.copytree(tiny_eps_dir, tmp_path / "model")
    (tmp_path / "link").symlink_to(model)
    code, _, err = cli("sample", "--teacher", model, "--prompt", "x", "--out", tmp_path / "link")
    assert code == 2 and "is the --teacher input" in err
    assert not (model / "images").exists()


@pytest.mark.parametrize("flag", ["--prompts", "--coco"])
def test_out_equal_to_a_prompt_file_is_refused(tmp_path, tiny_eps_dir, cli, flag):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(["x"] if flag == "--prompts" else {"annotations": [{"image_id": 1, "caption": "x"}]}))
    code, _, err = cli("sample", "--teacher", tiny_eps_dir, flag, path, "--out", path)
    assert code == 2 and f"is the {flag} input" in err and err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["--guidance", "nan"], "--guidance must be a finite number >= 0"),
    (["--guidance", "inf"], "--guidance must be a finite number >= 0"),
    (["--guidance", "-1"], "--guidance must be a finite number >= 0"),
    (["--limit", "0"], "--limit must be a positive integer"),
    (["--limit", "-1"], "--limit must be a positive integer"),
    (["--steps", "-2"], "--steps must be a positive integer"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--size", "0"], "--size must be a positive integer"),
])
def test_numeric_flags_are_checked_before_anything_loads(tmp_path, cli, monkeypatch, args, message):
    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(stage, "load_pipeline", no_load)
    code, _, err = cli("sample", "--teacher", "toy", "--prompt", "a", "--prompt", "b", *args, "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_guidance_below_one_is_allowed(tmp_path, tiny_eps_dir):
    m = json.loads(stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=tmp_path / "s", steps=1, guidance=0.5),
                             _items()[:1]).read_text())
    assert m["config"]["guidance"] == 0.5 and m["metrics"]["unet_calls_per_image"] == 1


def test_ddim_never_clips_latents():
    """The toy teacher's scheduler config (DPM-Solver's) has no clip_sample; DDIM's default (True) would clip x0 to
    [-1, 1], which ruins latent-space sampling (the toy teacher at 16 DDIM steps drew exact 0.006 with it). Only
    DDIM has the setting among the samplers offered."""
    from snapdistill.models.toy_weights import toy_teacher_dir

    config = json.loads((toy_teacher_dir() / "scheduler" / "scheduler_config.json").read_text())
    assert "clip_sample" not in config
    assert make_scheduler("ddim", config).config.clip_sample is False


@pytest.fixture
def eight_step_student(tmp_path, capsys):
    """A tiny pipeline folder recorded as an 8-step student."""
    from snapdistill.models.student_record import StudentRecord

    folder = _ddim_student(tmp_path / "student", StudentRecord(
        stage="distill-steps", num_inference_steps=8, timesteps=[999, 874, 749, 624, 499, 374, 249, 124],
        mode="direct", from_steps=16))
    capsys.readouterr()  # diffusers' save progress bars are not the command's output
    return folder


@pytest.mark.parametrize("flags", [("--steps", "16"), ("--scheduler", "dpmsolver++")])
def test_a_student_is_refused_off_its_grid(cli, tmp_path, eight_step_student, flags):
    code, _, err = cli("sample", "--teacher", eight_step_student, "--prompt", "x", "--out", tmp_path / "o", *flags)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{' '.join(flags)} samples off the grid" in err and "8 steps" in err and "[999, 874," in err
    assert "--allow-off-grid" in err and not (tmp_path / "o").exists()


def test_allow_off_grid_samples_there_and_says_so(cli, tmp_path, eight_step_student):
    code, _, err = cli("sample", "--teacher", eight_step_student, "--prompt", "x", "--out", tmp_path / "o",
                       "--steps", "16", "--allow-off-grid")
    assert code == 0 and "warning: --steps 16 samples off the grid" in err
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["config"]["off_grid"] is True and "8 steps" in m["config"]["warning"]
    assert m["config"]["steps"] == 16 and m["metrics"]["unet_calls_per_image"] == 32  # CFG doubles each call
    code, _, _ = cli("sample", "--teacher", eight_step_student, "--prompt", "x", "--out", tmp_path / "own",
                     "--steps", "8")  # its own count, said aloud, is on the grid
    assert code == 0 and json.loads((tmp_path / "own" / "manifest.json").read_text())["config"]["off_grid"] is False


def test_an_image_depends_on_its_seed_and_prompt_and_the_batch_size_moves_it_at_most_one_grey_level(tmp_path,
                                                                                                   tiny_eps_dir):
    """What is promised (README, "sample"): each image's noise comes from its own seed, so an image drawn in a
    batch of 1 or of 4, at any place in it, is the same picture; batched float kernels round differently at
    different batch sizes, so a pixel may move by one grey level. The same batch size gives the same bytes."""
    prompts = [f"a {c} square" for c in ("red", "green", "blue", "yellow", "purple")]
    items = [PromptItem(i, p) for i, p in enumerate(prompts)]

    def draw(name, batch_size):
        out = tmp_path / name
        stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=out, steps=3, batch_size=batch_size, seed=7), items)
        return np.stack([np.asarray(Image.open(out / "images" / f"{i:05d}-s{7 + i}.png")).astype(int)
                         for i in range(len(items))])

    one, four, four_again = draw("b1", 1), draw("b4", 4), draw("b4-again", 4)
    assert np.abs(one - four).max() <= 1
    np.testing.assert_array_equal(four, four_again)
    # The bound is not met by chance: images of other seeds differ by far more than one grey level.
    assert np.abs(one[0] - one[1]).max() > 10


def test_a_rerun_with_another_batch_size_is_refused_and_the_folder_keeps_one(tmp_path, tiny_eps_dir):
    """Images drawn at other batch sizes differ in their last bits (above), so a folder is finished only at the
    batch size that began it; a run.json written before batch sizes were recorded is not compared on them."""
    out = tmp_path / "run"
    stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=out, steps=2, batch_size=2), _items())
    (out / "images" / "00003-s3.png").unlink()
    with pytest.raises(stage.SnapdistillError, match=r"holds images made with other settings \(batch_size differ\)"):
        stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=out, steps=2, batch_size=3), _items())
    assert not (out / "images" / "00003-s3.png").exists()
    settings = json.loads((out / "run.json").read_text())
    assert (settings["batch_size"], settings["processes"]) == (2, 1)
    del settings["batch_size"], settings["processes"]
    (out / "run.json").write_text(json.dumps(settings))
    stage.run(stage.SampleConfig(model=str(tiny_eps_dir), out=out, steps=2, batch_size=3), _items())
    assert (out / "images" / "00003-s3.png").is_file()
