"""The two distillation stages end to end on a tiny random pipeline: outputs, drop-in, bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from snapdistill.distill import guidance_stage, steps_stage
from snapdistill.distill.loop import TrainConfig
from snapdistill.distill.stage import CommonConfig
from snapdistill.sampling import render
from snapdistill.sampling import stage as sample
from snapdistill.sampling.prompts import PromptItem

PROMPTS = ["a red square", "a blue square"]


def _common(teacher, shards, out, **kw):
    train = TrainConfig(max_steps=kw.pop("max_steps", 3), batch_size=4, checkpoint_every=0, ema_decay=0)
    return CommonConfig(teacher=str(teacher), shards=shards, out=out, train=train, val_prompts=1, **kw)


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory, tiny_eps_dir, test_shards):
    out = tmp_path_factory.mktemp("guided") / "run"
    guidance_stage.run(guidance_stage.GuidanceConfig(common=_common(tiny_eps_dir, test_shards, out), cond_dim=32,
                                                     val_steps=2))
    return out


@pytest.fixture(scope="module")
def steps_run(tmp_path_factory, guided_run, test_shards):
    out = tmp_path_factory.mktemp("steps") / "run"
    steps_stage.run(steps_stage.StepsConfig(common=_common(guided_run / "student", test_shards, out),
                                            from_steps=8, to_steps=2))
    return out


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory, steps_run, test_shards):
    """The end of the chain: one progressive round 2 -> 1 from the 2-step student."""
    out = tmp_path_factory.mktemp("one-step") / "run"
    steps_stage.run(steps_stage.StepsConfig(common=_common(steps_run / "student", test_shards, out),
                                            from_steps=2, to_steps=1, mode="progressive"))
    return out


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory, tiny_eps_dir, test_shards):
    """One stage from the base teacher: the student takes w and learns the CFG teacher's landing."""
    out = tmp_path_factory.mktemp("embedded") / "run"
    steps_stage.run(steps_stage.StepsConfig(common=_common(tiny_eps_dir, test_shards, out), from_steps=8, to_steps=2,
                                            embed_guidance=True, cond_dim=32))
    return out


def _count_rows(pipe):
    rows, timesteps = [0], []

    def hook(_m, args, kwargs):
        rows[0] += (args[0] if args else kwargs["sample"]).shape[0]
        timesteps.append(int(args[1] if len(args) > 1 else kwargs["timestep"]))

    pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    return rows, timesteps


def test_guided_student_run_folder(guided_run):
    manifest = json.loads((guided_run / "manifest.json").read_text())
    assert manifest["stage"] == "distill-guidance" and manifest["counts"]["steps"] == 3
    assert [json.loads(x)["step"] for x in (guided_run / "stats.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (guided_run / "val" / "step-0000003.png").is_file()
    assert "distill-guidance" in (guided_run / "student" / "README.md").read_text()
    unet_config = json.loads((guided_run / "student" / "unet" / "config.json").read_text())
    assert unet_config["time_cond_proj_dim"] == 32


@pytest.mark.parametrize("run_name, steps", [("guided_run", 3), ("steps_run", None), ("one_step_run", None),
                                             ("embedded_run", None)])
def test_student_runs_in_stock_diffusers_one_call_per_step(request, tmp_path, run_name, steps):
    """StableDiffusionPipeline.from_pretrained(student): one UNet row per image per step at guidance 7.5, and the
    same images as `snapdistill sample`."""
    from diffusers import StableDiffusionPipeline

    folder = request.getfixturevalue(run_name) / "student"
    info = json.loads((folder / "snapdistill.json").read_text())
    n_steps = steps or info["num_inference_steps"]
    m = json.loads(sample.run(sample.SampleConfig(model=str(folder), out=tmp_path / "s", steps=steps),
                              [PromptItem(i, p) for i, p in enumerate(PROMPTS)]).read_text())
    stock = StableDiffusionPipeline.from_pretrained(folder)
    if steps:
        from diffusers import DPMSolverMultistepScheduler

        stock.scheduler = DPMSolverMultistepScheduler.from_config(
            stock.scheduler.config, algorithm_type="dpmsolver++", timestep_spacing="trailing")
    rows, timesteps = _count_rows(stock)
    images = stock(PROMPTS, guidance_scale=7.5, num_inference_steps=n_steps, height=32, width=32, output_type="np",
                   generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).images
    assert rows[0] == len(PROMPTS) * n_steps and m["metrics"]["unet_calls_per_image"] == n_steps
    assert m["config"]["scheduler"]["name"] == ("dpmsolver++" if steps else "own")
    if not steps:  # a step-distilled student is sampled on exactly the timesteps it was trained on
        assert timesteps == info["timesteps"] == [999, 499][:n_steps]
    ours = np.stack([np.asarray(Image.open(tmp_path / "s" / "images" / f"{i:05d}-s{i}.png")) for i in range(2)])
    np.testing.assert_array_equal(ours, render.to_uint8(images))


def test_step_student_manifest(steps_run):
    manifest = json.loads((steps_run / "manifest.json").read_text())
    assert manifest["stage"] == "distill-steps" and manifest["config"]["from_steps"] == 8
    sched = json.loads((steps_run / "student" / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["_class_name"], sched["timestep_spacing"]) == ("DDIMScheduler", "trailing")


def test_embedded_student_takes_w(embedded_run, tiny_eps_dir):
    info = json.loads((embedded_run / "student" / "snapdistill.json").read_text())
    assert info["guidance_embedding"] is True and info["num_inference_steps"] == 2
    unet_config = json.loads((embedded_run / "student" / "unet" / "config.json").read_text())
    teacher_config = json.loads((tiny_eps_dir / "unet" / "config.json").read_text())
    assert unet_config["time_cond_proj_dim"] == 32 and teacher_config["time_cond_proj_dim"] is None


def test_v_teacher_and_v_student(tmp_path, tiny_v_dir, tiny_eps_dir, test_shards):
    for teacher, choice in ((tiny_v_dir, "same"), (tiny_eps_dir, "v_prediction")):
        out = tmp_path / f"{teacher.name}-{choice}"
        steps_stage.run(steps_stage.StepsConfig(common=_common(teacher, test_shards, out, student_prediction=choice,
                                                               max_steps=2), from_steps=4, to_steps=2))
        manifest = json.loads((out / "manifest.json").read_text())
        assert np.isfinite(manifest["metrics"]["final_loss"])
        sched = json.loads((out / "student" / "scheduler" / "scheduler_config.json").read_text())
        assert sched["prediction_type"] == "v_prediction"


def test_progressive_rounds_are_sub_runs(tmp_path, tiny_eps_dir, test_shards):
    out = tmp_path / "p"
    steps_stage.run(steps_stage.StepsConfig(common=_common(tiny_eps_dir, test_shards, out, max_steps=1),
                                            from_steps=8, to_steps=2, mode="progressive"))
    rounds = [json.loads((out / d / "manifest.json").read_text())["config"]["round"]
              for d in ("round-1-8to4", "round-2-4to2")]
    assert rounds == [[8, 4], [4, 2]]
    assert json.loads((out / "student" / "snapdistill.json").read_text())["num_inference_steps"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["round_2"] == "round-2-4to2"
    # The first round's teacher is a full denoiser (its ODE, 2 DPM-Solver++ substeps per step); the second's is the
    # first round's 4-step student, which knows only its own coarse grid (one DDIM step per teacher step).
    assert manifest["config"]["landings"] == [
        {"round": [8, 4], "teacher_substeps": 2, "teacher_solver": "dpmsolver++", "target_space": "x0"},
        {"round": [4, 2], "teacher_substeps": 1, "teacher_solver": "ddim", "target_space": "eps"}]


def test_a_step_student_teacher_lands_on_its_own_grid(one_step_run):
    manifest = json.loads((one_step_run / "manifest.json").read_text())
    assert manifest["config"]["landings"] == [  # a 1-step student predicts v (auto), and is regressed in v
        {"round": [2, 1], "teacher_substeps": 1, "teacher_solver": "ddim", "target_space": "v"}]
    assert json.loads((one_step_run / "student" / "snapdistill.json").read_text())["timesteps"] == [999]


def test_auto_prediction_makes_one_and_two_step_students_predict_v(one_step_run):
    from snapdistill.distill.student import student_prediction_type

    assert [student_prediction_type("auto", "epsilon", m) for m in (1, 2, 4, 8, None)] == \
        ["v_prediction"] + ["epsilon"] * 4
    assert student_prediction_type("same", "epsilon", 1) == "epsilon"
    assert student_prediction_type("auto", "v_prediction", 8) == "v_prediction"
    sched = json.loads((one_step_run / "student" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction"


def test_the_landing_flags_override_the_teachers_default(tmp_path):
    from snapdistill.distill.steps_config import landing

    config = steps_stage.StepsConfig(common=_common("toy", tmp_path, tmp_path / "o"), from_steps=4, to_steps=2)
    # A step student of 4 steps or fewer lands on its own grid; one of 8, or a full denoiser, by 2 DPM++ substeps.
    # ... regressed in the student's own output there, in x0 elsewhere.
    assert [landing(config, steps, "epsilon") for steps in (1, 2, 4, 8, None)] == \
        [(1, "ddim", "eps")] * 3 + [(2, "dpmsolver++", "x0")] * 2
    assert landing(config, 2, "v_prediction") == (1, "ddim", "v") and landing(config, 8, "v_prediction")[2] == "x0"
    config.teacher_substeps, config.teacher_solver, config.target_space = 3, "dpmsolver++", "x0"
    assert landing(config, 2, "v_prediction") == (3, "dpmsolver++", "x0")


def _bad(cli, tmp_path, teacher, shards, *extra):
    return cli("distill-steps", "--teacher", teacher, "--shards", shards, "--out", tmp_path / "o",
               "--max-steps", 1, "--batch-size", 2, *extra)


@pytest.mark.parametrize("extra, message", [
    (("--from", 16, "--to", 5), "--to must divide --from"),
    (("--from", 8, "--to", 8), "--to must be smaller than --from"),
    (("--from", 12, "--to", 4, "--mode", "progressive"), "power of 2"),
    (("--from", 2, "--to", 0, "--mode", "progressive"), "--from and --to must be integers >= 1"),
    (("--from", 2, "--to", 4, "--mode", "progressive"), "--to must be smaller than --from"),
    (("--from", 4, "--to", 3, "--mode", "progressive"), "--to must divide --from"),
])
def test_bad_step_counts(cli, tmp_path, tiny_eps_dir, test_shards, extra, message):
    code, _, err = _bad(cli, tmp_path, tiny_eps_dir, test_shards, *extra)
    assert code == 2 and message in err and err.count("\n") == 1
    # Refused before any model loads: the same line with a teacher folder that holds nothing.
    (tmp_path / "empty").mkdir(exist_ok=True)
    code, _, err = _bad(cli, tmp_path, tmp_path / "empty", test_shards, *extra)
    assert code == 2 and message in err and err.count("\n") == 1


def test_a_step_student_teacher_needs_its_own_step_count(cli, tmp_path, steps_run, test_shards):
    code, _, err = _bad(cli, tmp_path, steps_run / "student", test_shards, "--from", 4, "--to", 1)
    assert code == 2 and "--teacher is a 2-step student" in err and "--from 2" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_unknown_prediction_type(cli, tmp_path, tiny_eps_dir, test_shards):
    teacher = shutil.copytree(tiny_eps_dir, tmp_path / "weird")
    cfg_path = teacher / "scheduler" / "scheduler_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "prediction_type": "flow"}))
    code, _, err = _bad(cli, tmp_path, teacher, test_shards, "--from", 4, "--to", 2)
    assert code == 2 and "'flow'" in err and "epsilon" in err


def test_no_shards(cli, tmp_path, tiny_eps_dir):
    from snapdistill.manifest import write_manifest

    (tmp_path / "empty").mkdir()
    write_manifest(tmp_path / "empty", stage="build-data", config={})
    code, _, err = _bad(cli, tmp_path, tiny_eps_dir, tmp_path / "empty", "--from", 4, "--to", 2)
    assert code == 2 and err.count("\n") == 1 and "manifest.json lists no shards" in err, err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_finished_run_and_resume_with_other_settings(cli, tmp_path, tiny_eps_dir, test_shards):
    args = ("--from", 4, "--to", 2, "--checkpoint-every", 1)
    assert _bad(cli, tmp_path, tiny_eps_dir, test_shards, *args)[0] == 0
    code, _, err = _bad(cli, tmp_path, tiny_eps_dir, test_shards, *args)
    assert code == 2 and "holds a finished run; pass --overwrite" in err
    (tmp_path / "o" / "manifest.json").unlink()  # pretend it stopped before the end
    code, _, err = _bad(cli, tmp_path, tiny_eps_dir, test_shards, *args, "--lr", "0.5", "--cfg-prob", "0.3",
                        "--resume", "latest")
    assert code == 2 and "(cfg_prob, common.train.lr differ)" in err


def files(folder):
    """Every file under `folder` with its bytes: what must survive a refused run."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("stage, teacher_at, shards_at, out_at, how", [
    ("distill-guidance", None, "x", "x", "is the --shards input"),
    ("distill-guidance", None, "p/shards", "p", "contains the --shards input"),
    ("distill-guidance", None, "p/shards", "p/shards/run", "lies inside the --shards input"),
    ("distill-steps", "r/student", "s", "r", "contains the --teacher input"),
    ("distill-steps", "r/student", "s", "r/student", "is the --teacher input"),
    ("distill-steps", "r/student", "s", "r/student/run", "lies inside the --teacher input"),
])
def test_out_overlapping_an_input_is_refused_and_nothing_is_deleted(cli, tmp_path, tiny_eps_dir, test_shards, stage,
                                                                    teacher_at, shards_at, out_at, how):
    teacher = shutil.copytree(tiny_eps_dir, tmp_path / teacher_at) if teacher_at else tiny_eps_dir
    shards = shutil.copytree(test_shards, tmp_path / shards_at)
    before = {f: files(f) for f in (teacher, shards)}
    code, _, err = cli(stage, "--teacher", teacher, "--shards", shards, "--out", tmp_path / out_at, "--overwrite",
                       "--max-steps", 1, "--batch-size", 2, *(("--from", 4, "--to", 2) if stage == "distill-steps" else ()))
    assert code == 2 and err.count("\n") == 1, err
    assert f"--out {tmp_path / out_at} {how} {tmp_path / (teacher_at or shards_at)}" in err
    assert "choose an --out outside every input" in err
    assert {f: files(f) for f in (teacher, shards)} == before


def test_out_overlapping_a_named_teacher_is_refused(cli, tmp_path, test_shards, monkeypatch):
    """A teacher name is checked by the local folder it resolves to, not by its spelling."""
    from snapdistill.models.loading import models_dir

    monkeypatch.setenv("SNAPDISTILL_MODELS", str(tmp_path / "models"))
    (models_dir() / "sd15").mkdir(parents=True)
    (models_dir() / "sd15" / "model_index.json").write_text("{}")
    code, _, err = cli("distill-guidance", "--teacher", "sd15", "--shards", test_shards, "--out", tmp_path / "models",
                       "--overwrite")
    assert code == 2 and "contains the --teacher input" in err and err.count("\n") == 1
    assert (models_dir() / "sd15" / "model_index.json").is_file()


@pytest.mark.parametrize("flag, value, message", [
    ("--lr", "nan", "--lr must be a finite number > 0"),
    ("--lr", "inf", "--lr must be a finite number > 0"),
    ("--lr", "0", "--lr must be a finite number > 0"),
    ("--lr", "-1e-4", "--lr must be a finite number > 0"),
    ("--grad-accum", "0", "--grad-accum must be an integer >= 1"),
    ("--batch-size", "0", "--batch-size must be an integer >= 1"),
    ("--max-steps", "0", "--max-steps must be an integer >= 1"),
    ("--warmup-steps", "-1", "--warmup-steps must be an integer >= 0"),
    ("--ema-decay", "1", "--ema-decay must be in [0, 1)"),
    ("--ema-decay", "-0.1", "--ema-decay must be in [0, 1)"),
    ("--ema-decay", "nan", "--ema-decay must be in [0, 1)"),
    ("--max-minutes", "0", "--max-minutes must be a finite number > 0"),
    ("--checkpoint-every", "-1", "--checkpoint-every must be an integer >= 0"),
    ("--caption-dropout", "1.5", "--caption-dropout must be in [0, 1]"),
    ("--student-prediction", "x0", "unknown --student-prediction 'x0'"),
    ("--guidance-range", "0.5-4", "--guidance-range must satisfy 1 <= low <= high"),
    ("--guidance-range", "8-2", "--guidance-range must satisfy 1 <= low <= high"),
])
@pytest.mark.parametrize("stage", ["distill-guidance", "distill-steps"])
def test_numeric_settings_are_checked_before_anything_loads(cli, tmp_path, test_shards, monkeypatch, stage, flag,
                                                            value, message):
    from snapdistill.distill import stage as common_stage

    def no_load(*a, **k):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(common_stage, "load_pipeline", no_load)
    code, _, err = cli(stage, "--teacher", "toy", "--shards", test_shards, "--out", tmp_path / "o", flag, value)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_cfg_range_is_an_old_name_of_guidance_range(cli, tmp_path, test_shards):
    code, out, _ = cli("distill-steps", "--shards", test_shards, "--out", tmp_path / "o", "--cfg-range", "3-5",
                       "--dry-run")
    assert code == 0 and json.loads(out)["cfg_range"] == [3.0, 5.0] and not (tmp_path / "o").exists()
    code, _, err = cli("distill-steps", "--shards", test_shards, "--out", tmp_path / "o", "--cfg-range", "0-5")
    assert code == 2 and "--guidance-range must satisfy 1 <= low <= high" in err


def test_a_flag_without_effect_is_named_before_the_teacher_loads(cli, capsys, tmp_path, test_shards, monkeypatch):
    """With a teacher that takes w (a stage-1 student), --cfg-prob changes nothing: one warning line, read from the
    teacher's unet/config.json before any weights load."""
    from snapdistill.distill import stage as common_stage
    from snapdistill.errors import SnapdistillError
    from snapdistill.models.tiny import save_tiny_pipeline

    teacher = save_tiny_pipeline(tmp_path / "w-teacher", time_cond_proj_dim=32)
    capsys.readouterr()  # diffusers' save progress bars

    def no_load(*a, **k):
        raise SnapdistillError("stopped before loading")

    monkeypatch.setattr(common_stage, "load_pipeline", no_load)
    args = ("distill-steps", "--teacher", teacher, "--shards", test_shards, "--out", tmp_path / "o", "--from", 4,
            "--to", 2)
    code, _, err = cli(*args, "--cfg-prob", "0.3")
    lines = err.splitlines()
    assert code == 2 and len(lines) == 2 and lines[-1] == "error: stopped before loading", err
    assert lines[0].startswith("warning: --cfg-prob has no effect: the student takes w")
    code, _, err = cli(*args)  # left at its default: nothing to say
    assert code == 2 and err.splitlines() == ["error: stopped before loading"]


def test_default_lr_is_resolved_by_size_and_recorded(guided_run):
    """No --lr: the tiny student gets the small-model rate, and config.json and the manifest say so."""
    for name in ("config.json", "manifest.json"):
        config = json.loads((guided_run / name).read_text())
        config = config.get("config", config)
        assert config["common"]["train"]["lr"] == 3e-4


def test_every_mode_has_a_route_and_every_route_a_mode():
    """`StepsConfig.check` accepts MODES and `routes.run` dispatches on ROUTES: the two lists name the same modes, so
    a mode the check lets through always has a route, and a new route is reachable from the command line."""
    from snapdistill.distill.routes import ROUTES
    from snapdistill.distill.steps_config import MODES

    assert sorted(ROUTES) == sorted(MODES)
    assert ROUTES["direct"] is ROUTES["progressive"] is steps_stage.run
