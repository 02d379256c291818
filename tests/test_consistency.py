"""Latent consistency distillation: closed forms, the saved LCMScheduler, a tiny run, resume, bad input."""

import json

import pytest
import torch

from snapdistill.diffusion import DiffusionModel, NoiseSchedule, Prediction, ddim_step
from snapdistill.distill.consistency import (
    ConsistencyLoss,
    boundary_scalings,
    consistency_function,
    ema_update,
    lcm_scheduler,
    pseudo_huber,
    sampling_timesteps,
    skip_grid,
    solver_step,
)
from snapdistill.distill.guided import Guided, StudentKind
from snapdistill.distill.losses import Batch
from snapdistill.models.tiny import SD_SCHEDULER_CONFIG

SD = NoiseSchedule.from_scheduler_config(SD_SCHEDULER_CONFIG)


def _randn(seed, shape=(3, 4, 6, 6)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_boundary_conditions_at_t0_give_the_identity():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 0]))
    assert c_skip.tolist() == [1.0, 1.0] and c_out.tolist() == [0.0, 0.0]
    z, x0 = _randn(0, (2, 4, 6, 6)), _randn(1, (2, 4, 6, 6))
    pred = Prediction(x0=x0, eps=x0, output=x0, prediction_type="sample", alpha=1.0, sigma=0.0)
    assert torch.equal(consistency_function(pred, z, torch.tensor([0, 0])), z)


def test_boundary_scalings_closed_form_and_diffusers():
    from diffusers import LCMScheduler

    sched = LCMScheduler(**SD_SCHEDULER_CONFIG)
    t = torch.tensor([1, 19, 259, 999])
    c_skip, c_out = boundary_scalings(t)
    # t = 999: (10·999)² ≫ 0.25, so c_skip ≈ 0.25/9990² and c_out ≈ 1.
    assert c_skip[3].item() == pytest.approx(0.25 / (9990**2 + 0.25), rel=1e-6)
    assert c_out[0].item() == pytest.approx(10 / (100 + 0.25) ** 0.5, rel=1e-6)
    for i, ti in enumerate(t.tolist()):
        ref_skip, ref_out = sched.get_scalings_for_boundary_condition_discrete(ti)
        assert c_skip[i].item() == pytest.approx(ref_skip, rel=1e-6)
        assert c_out[i].item() == pytest.approx(ref_out, rel=1e-6)


def test_skip_grid_is_lcm_schedulers_original_grid():
    assert skip_grid(1000, 50)[:3] == [19, 39, 59] and skip_grid(1000, 50)[-1] == 999 and len(skip_grid(1000, 50)) == 50
    assert skip_grid(1000, 4) == [249, 499, 749, 999]


def test_solver_step_is_ddim_step_to_the_point_k_below():
    x0, eps = _randn(2), _randn(3)
    t_prev = torch.tensor([0, 479, 979])
    alpha, sigma = SD.alpha_sigma(t_prev)
    pred = Prediction(x0=x0, eps=eps, output=eps, prediction_type="epsilon", alpha=1.0, sigma=1.0)
    assert torch.equal(solver_step(pred, SD, t_prev), ddim_step(x0=x0, eps=eps, alpha_next=alpha, sigma_next=sigma))
    # From the exact x0 and eps of z_t, the step lands on z_{t'} built from the same pair.
    expected = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(solver_step(pred, SD, t_prev), expected)


def test_target_ema_update_value():
    target, online = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        target.weight.fill_(1.0), target.bias.fill_(-2.0)
        online.weight.fill_(3.0), online.bias.fill_(2.0)
    ema_update(target, online, 0.95)
    torch.testing.assert_close(target.weight, torch.full((2, 3), 0.95 * 1 + 0.05 * 3))
    torch.testing.assert_close(target.bias, torch.full((2,), 0.95 * -2 + 0.05 * 2))
    assert online.weight.eq(3.0).all()  # the online network is left alone
    ema_update(target, online, 0.0)  # mu = 0: the target is the online network
    assert torch.equal(target.weight, online.weight)


def test_pseudo_huber_closed_form():
    pred, target = torch.zeros(2, 1, 1, 4), torch.tensor([3.0, 0, 0, 0]).expand(2, 1, 1, 4)
    c = 4.0
    # One element at distance 3: sqrt(9 + 16) − 4 = 1, three at 0: 0; the mean over 4 elements is 0.25.
    assert pseudo_huber(pred, target, c).tolist() == [0.25, 0.25]


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
@pytest.mark.parametrize("n", [50, 30])
def test_saved_scheduler_timesteps_are_lcm_schedulers(tmp_path, steps, n):
    """The student's scheduler, saved and reloaded, visits exactly what LCMScheduler.set_timesteps gives on the same
    config; every one is a training grid point."""
    from diffusers import LCMScheduler

    teacher_config = dict(SD_SCHEDULER_CONFIG, algorithm_type="dpmsolver++", solver_order=2)  # a DPM-Solver teacher's
    ours = lcm_scheduler(teacher_config, num_ddim_timesteps=n, prediction_type="epsilon")
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert "algorithm_type" not in saved and saved["original_inference_steps"] == n and saved["clip_sample"] is False
    loaded = LCMScheduler.from_pretrained(tmp_path)
    stock = LCMScheduler(**SD_SCHEDULER_CONFIG, original_inference_steps=n)
    stock.set_timesteps(steps)
    assert sampling_timesteps(loaded, steps) == stock.timesteps.tolist()
    assert set(stock.timesteps.tolist()) <= set(skip_grid(1000, n))
    if n == 50:
        assert sampling_timesteps(loaded, 4) == [999, 759, 499, 259]


class _Const(torch.nn.Module):
    """A UNet stand-in that outputs `scale`·z whatever else it is given."""

    def __init__(self, scale):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)))

    def forward(self, z, t, encoder_hidden_states=None, timestep_cond=None, return_dict=False):
        return (self.scale * z,)


def test_consistency_loss_is_zero_when_target_matches_the_online_solver_fixed_point():
    """Online = target = teacher = x0-predictor returning 0: f(z, t) = c_skip(t)·z; the solver lands on σ'·0 + α'·0
    = 0, so the target is 0 and the loss is d(c_skip·z, 0), computed here in closed form."""
    schedule = SD
    zero = DiffusionModel(_Const(0.0), schedule, "sample")
    loss = ConsistencyLoss(teacher=Guided(zero, None), student=StudentKind("sample", None), target=Guided(zero, None),
                           schedule=schedule, num_ddim_timesteps=50, distance="l2")
    x0 = _randn(4, (2, 4, 2, 2))
    batch = Batch(latents=x0, cond=torch.zeros(2, 3, 8), uncond=torch.zeros(1, 3, 8))
    gen = torch.Generator().manual_seed(0)
    value = loss(_Const(0.0), batch, gen)
    # Replay the draws: the grid index, then the noise.
    replay = torch.Generator().manual_seed(0)
    t = torch.tensor(skip_grid(1000, 50))[torch.randint(0, 50, (2,), generator=replay)]
    eps = torch.randn(x0.shape, generator=replay)
    alpha, sigma = schedule.alpha_sigma(t)
    z = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps
    c_skip, _ = boundary_scalings(t)
    expected = ((c_skip.view(-1, 1, 1, 1) * z) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(value, expected)


# ---- a tiny run through the CLI ----------------------------------------------------------------------------------

def _train(cli, out, teacher, shards, *extra):
    return cli("distill-steps", "--mode", "consistency", "--teacher", teacher, "--shards", shards, "--out", out,
               "--to", 4, "--num-ddim-timesteps", 8, "--batch-size", 2, "--cond-dim", 32, "--ema-decay", 0,
               "--caption-dropout", 0, *extra)


@pytest.fixture(scope="module")
def lcm_run(tmp_path_factory, tiny_eps_dir, test_shards, run_ok):
    out = tmp_path_factory.mktemp("lcm") / "run"
    run_ok("distill-steps", "--mode", "consistency", "--teacher", tiny_eps_dir, "--shards", test_shards, "--out", out,
           "--to", 4, "--num-ddim-timesteps", 8, "--batch-size", 2, "--cond-dim", 32, "--max-steps", 2,
           "--checkpoint-every", 1, "--lr", "1e-3", "--warmup-steps", 1)
    return out


def test_student_folder_runs_in_stock_diffusers_one_call_per_step(lcm_run, tmp_path):
    from diffusers import LCMScheduler, StableDiffusionPipeline

    from snapdistill.sampling import stage as sample
    from snapdistill.sampling.prompts import PromptItem

    folder = lcm_run / "student"
    info = json.loads((folder / "snapdistill.json").read_text())
    assert (info["mode"], info["num_inference_steps"], info["original_inference_steps"]) == ("consistency", 4, 8)
    assert info["guidance_embedding"] is True and info["timesteps"] == [999, 749, 499, 249]
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.unet.config.time_cond_proj_dim == 32
    rows, timesteps = [0], []

    def hook(_m, args, kwargs):
        rows[0] += (args[0] if args else kwargs["sample"]).shape[0]
        timesteps.append(int(args[1] if len(args) > 1 else kwargs["timestep"]))

    pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    prompts = ["a red square", "a blue square"]
    for steps, grid in ((4, [999, 749, 499, 249]), (2, [999, 499])):
        rows[0], timesteps[:] = 0, []
        pipe(prompts, guidance_scale=7.5, num_inference_steps=steps, height=32, width=32, output_type="np")
        assert rows[0] == len(prompts) * steps and timesteps == grid
    # `sample` picks the saved LCMScheduler and the recorded step count; 2 steps stay on the grid.
    for steps in (None, 2):
        m = json.loads(sample.run(sample.SampleConfig(model=str(folder), out=tmp_path / f"s{steps}", steps=steps),
                                  [PromptItem(0, "a red square")]).read_text())
        assert m["config"]["scheduler"]["class"] == "LCMScheduler" and m["config"]["off_grid"] is False
        assert m["metrics"]["unet_calls_per_image"] == (steps or 4)


def test_run_folder_and_checkpoint_hold_the_target_network(lcm_run):
    from safetensors.torch import load_file

    from snapdistill.distill.loop import latest_checkpoint

    manifest = json.loads((lcm_run / "manifest.json").read_text())
    assert manifest["config"]["mode"] == "consistency" and manifest["config"]["consistency"]["target_ema"] == 0.95
    ckpt = latest_checkpoint(lcm_run)
    online, target = load_file(ckpt / "model.safetensors"), load_file(ckpt / "extra.safetensors")
    assert online.keys() == target.keys()
    # Two steps moved the online student; the target followed at 1 − μ of the way, so it differs from both ends.
    key = "time_embedding.cond_proj.weight"
    assert online[key].abs().max() > 0 and 0 < target[key].abs().max() < online[key].abs().max()


def test_resume_gives_bitwise_the_same_weights(cli, tmp_path, tiny_eps_dir, test_shards):
    from safetensors.torch import load_file

    flags = ("--max-steps", 3, "--checkpoint-every", 1, "--lr", "1e-3", "--warmup-steps", 1)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert _train(cli, straight, tiny_eps_dir, test_shards, *flags)[0] == 0
    assert _train(cli, stopped, tiny_eps_dir, test_shards, *flags)[0] == 0
    # Pretend the second run stopped after step 2: drop its last checkpoint, the student and the manifest.
    import shutil

    checkpoints = sorted((stopped / "checkpoints").glob("step-*"))
    shutil.rmtree(checkpoints[-1])
    (stopped / "checkpoints" / "latest").write_text(checkpoints[-2].name + "\n")
    (stopped / "manifest.json").unlink()
    shutil.rmtree(stopped / "student")
    assert _train(cli, stopped, tiny_eps_dir, test_shards, *flags, "--resume", "latest")[0] == 0
    for name in ("student/unet/diffusion_pytorch_model.safetensors", "checkpoints/step-0000003/extra.safetensors"):
        a, b = load_file(straight / name), load_file(stopped / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("extra, message", [
    (("--from", 16), "--mode consistency takes no --from"),
    (("--to", 64), "--to 64: a consistency student samples 1 to --num-ddim-timesteps (8) steps"),
    (("--num-ddim-timesteps", 2000, "--to", 4), "--num-ddim-timesteps 2000: the teacher's schedule has only 1000"),
    (("--guidance-range", "9-3"), "--guidance-range must satisfy 1 <= low <= high"),
    (("--loss", "l1"), "unknown --loss 'l1'"),
    (("--target-ema", "1"), "--target-ema must be in [0, 1)"),
])
def test_bad_input_is_one_line_before_the_teacher_loads(cli, tmp_path, tiny_eps_dir, test_shards, monkeypatch,
                                                        extra, message):
    from snapdistill.distill import stage as common_stage

    def no_load(*a, **k):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(common_stage, "load_pipeline", no_load)
    code, _, err = _train(cli, tmp_path / "o", tiny_eps_dir, test_shards, "--max-steps", 1, *extra)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_consistency_flags_without_the_mode_are_refused(cli, tmp_path, test_shards):
    code, _, err = cli("distill-steps", "--shards", test_shards, "--out", tmp_path / "o", "--loss", "l2")
    assert code == 2 and "need --mode consistency" in err and err.count("\n") == 1


def test_step_distillation_flags_without_effect_are_named(cli, tmp_path, tiny_eps_dir, test_shards, monkeypatch):
    from snapdistill.distill import stage as common_stage
    from snapdistill.errors import SnapdistillError

    def no_load(*a, **k):
        raise SnapdistillError("stopped before loading")

    monkeypatch.setattr(common_stage, "load_pipeline", no_load)
    code, _, err = _train(cli, tmp_path / "o", tiny_eps_dir, test_shards, "--teacher-substeps", 4)
    assert code == 2 and err.splitlines() == ["warning: --teacher-substeps has no effect with --mode consistency",
                                              "error: stopped before loading"], err


def test_from_a_stage1_student_the_student_copies_its_w_input(cli, tmp_path, test_shards, monkeypatch):
    """A teacher that takes w: its student is a copy (same time_cond_proj_dim, --cond-dim unused), and every UNet
    call in training (online, teacher, target) runs on the batch itself with w embedded, never on [uncond; cond]."""
    from snapdistill.diffusion.teacher import DiffusionModel as Model
    from snapdistill.models.tiny import save_tiny_pipeline

    teacher = save_tiny_pipeline(tmp_path / "w-teacher", time_cond_proj_dim=16)
    calls = []
    real = Model.raw_output

    def counted(self, z, t, encoder_hidden_states, *, timestep_cond=None):
        calls.append((z.shape[0], timestep_cond is not None))
        return real(self, z, t, encoder_hidden_states, timestep_cond=timestep_cond)

    monkeypatch.setattr(Model, "raw_output", counted)
    code, _, err = cli("distill-steps", "--mode", "consistency", "--teacher", teacher, "--shards", test_shards,
                       "--out", tmp_path / "o", "--to", 2, "--num-ddim-timesteps", 4, "--batch-size", 2,
                       "--max-steps", 1, "--cond-dim", 64)
    assert code == 0, err
    assert "--cond-dim has no effect: the teacher already takes w" in err
    unet_config = json.loads((tmp_path / "o" / "student" / "unet" / "config.json").read_text())
    assert unet_config["time_cond_proj_dim"] == 16
    assert calls[:3] == [(2, True)] * 3
