"""`distill-steps --mode dmd`: the generator gradient and losses against hand-computed values, a tiny run from
shards and from a prompt file, resume bit for bit (both networks, both optimisers), the student in stock diffusers
at one UNet call, bad settings."""

import json
import math
import shutil

import pytest
import torch

from snapdistill.diffusion import NoiseSchedule, Prediction
from snapdistill.distill.dmd import (
    DMDLoss,
    FakeScore,
    GANHead,
    PromptBatch,
    denoising_loss,
    dmd_gradient,
    gan_generator_loss,
    gan_head_loss,
    generator_loss,
    score_timesteps,
)
from snapdistill.distill.guided import StudentKind
from snapdistill.models.tiny import SD_SCHEDULER_CONFIG

SD = NoiseSchedule.from_scheduler_config(SD_SCHEDULER_CONFIG)


def test_dmd_gradient_hand_computed():
    # One sample of two elements: x = [1, 3], real_x0 = [0, 1], fake_x0 = [2, -1].
    # mean|x - real_x0| = (1 + 2) / 2 = 1.5; grad = (fake - real) / 1.5 = [2/1.5, -2/1.5].
    x = torch.tensor([[1.0, 3.0]])
    real, fake = torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, -1.0]])
    torch.testing.assert_close(dmd_gradient(x, real, fake), torch.tensor([[4 / 3, -4 / 3]]))
    # Per sample: a second sample with another scale is normalised by its own mean.
    x2 = torch.tensor([[1.0, 3.0], [4.0, 4.0]])
    real2, fake2 = torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.tensor([[2.0, -1.0], [1.0, 2.0]])
    torch.testing.assert_close(dmd_gradient(x2, real2, fake2), torch.tensor([[4 / 3, -4 / 3], [0.25, 0.5]]))
    # Fake equal to real: no gradient.
    assert torch.equal(dmd_gradient(x, real, real), torch.zeros_like(x))


def test_generator_loss_value_and_its_gradient_is_grad():
    x = torch.tensor([[1.0, 3.0], [0.5, -2.0]], requires_grad=True)
    grad = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    loss = generator_loss(x, grad)
    # 0.5 * ||x - (x - grad)||^2 = 0.5 * ||grad||^2 per sample.
    torch.testing.assert_close(loss.detach(), torch.tensor([0.5 * (0.25 + 1.0), 0.5 * (4.0 + 0.0625)]))
    loss.sum().backward()
    torch.testing.assert_close(x.grad, grad)


def test_score_timesteps_stay_in_the_dmd_range():
    t = score_timesteps(torch.Generator().manual_seed(0), 20_000, 1000)
    assert int(t.min()) == 20 and int(t.max()) == 980


def test_denoising_loss_is_zero_for_the_true_output_in_each_parametrisation():
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    alpha, sigma = torch.tensor([0.6, 0.8]).view(-1, 1, 1, 1), torch.tensor([0.8, 0.6]).view(-1, 1, 1, 1)
    z = alpha * x0 + sigma * eps
    for kind, output in (("epsilon", eps), ("v_prediction", alpha * eps - sigma * x0), ("sample", x0)):
        pred = Prediction.from_output(kind, z=z, output=output, alpha=alpha, sigma=sigma)
        torch.testing.assert_close(denoising_loss(pred, x0, eps), torch.zeros(2), atol=1e-10, rtol=0)
    # An eps model off by 1 everywhere: loss 1 per sample.
    pred = Prediction.from_output("epsilon", z=z, output=eps + 1, alpha=alpha, sigma=sigma)
    torch.testing.assert_close(denoising_loss(pred, x0, eps), torch.ones(2))


class _Const(torch.nn.Module):
    """A 'UNet' whose eps output is a learnable constant c (so its x0 depends on z and c only)."""

    def __init__(self, c):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(float(c)))

    def forward(self, z, t, encoder_hidden_states=None, timestep_cond=None, return_dict=False):
        return (torch.zeros_like(z) + self.c,)


def test_generator_gradient_vanishes_when_the_fake_score_is_the_real_one():
    from snapdistill.diffusion import DiffusionModel
    from snapdistill.distill.guided import Guided

    teacher = Guided(DiffusionModel(_Const(0.3), SD, "epsilon"), None)
    fake = FakeScore(_Const(0.3), StudentKind("epsilon", None), SD, lr=1e-3)
    loss = DMDLoss(real=teacher, fake=fake, generator=StudentKind("epsilon", None), schedule=SD,
                   latent_shape=(4, 2, 2), real_guidance=1.0, fake_updates=1)
    batch = PromptBatch(cond=torch.zeros(3, 1, 8), uncond=torch.zeros(1, 1, 8))
    x = loss.sample(_Const(0.1), batch, torch.Generator().manual_seed(0))
    assert torch.equal(loss.gradient(x, batch, torch.Generator().manual_seed(1)), torch.zeros_like(x))
    # A fake score that differs gives a nonzero gradient; one call also takes one fake update.
    fake.unet.c.data.fill_(0.5)
    assert loss.gradient(x, batch, torch.Generator().manual_seed(1)).abs().min() > 0
    before = float(fake.unet.c.detach())
    per_sample = loss(_Const(0.1), batch, torch.Generator().manual_seed(2))
    assert per_sample.shape == (3,) and float(fake.unet.c.detach()) != before and math.isfinite(fake.last_loss)


def test_gan_losses_hand_computed():
    logits = torch.tensor([0.0, 2.0, -1.0])
    # softplus(-l) = -log sigmoid(l): log 2 at 0.
    torch.testing.assert_close(gan_generator_loss(logits), torch.tensor([math.log(2), math.log1p(math.exp(-2)),
                                                                         math.log1p(math.e)]))
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(-3))) / 2 + (math.log1p(math.exp(-2)) + math.log(2)) / 2
    assert gan_head_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    head = GANHead(64)
    assert head(torch.randn(3, 64, 4, 4)).shape == (3,) and head(torch.randn(2, 64, 1, 1)).shape == (2,)


class _Recorder(torch.nn.Module):
    """A 'UNet' (v output a constant c) that records each call's timesteps and whether it carried gradient."""

    def __init__(self, c=0.1):
        super().__init__()
        self.c, self.calls = torch.nn.Parameter(torch.tensor(float(c))), []

    def forward(self, z, t, encoder_hidden_states=None, timestep_cond=None, return_dict=False):
        self.calls.append((t.tolist() if t.ndim else [int(t)] * z.shape[0], torch.is_grad_enabled()))
        return (torch.zeros_like(z) + self.c,)


def test_multi_step_generator_is_trained_on_the_inputs_its_sampler_sees():
    from snapdistill.diffusion import DiffusionModel, noisy
    from snapdistill.distill.guided import Guided

    loss = DMDLoss(real=Guided(DiffusionModel(_Const(0.3), SD, "epsilon"), None),
                   fake=FakeScore(_Const(0.3), StudentKind("epsilon", None), SD, lr=1e-3),
                   generator=StudentKind("v_prediction", None), schedule=SD, latent_shape=(4, 2, 2),
                   grid=(999, 749, 499, 249))
    batch = PromptBatch(cond=torch.zeros(64, 1, 8), uncond=torch.zeros(1, 1, 8))
    g = _Recorder()
    x = loss.sample(g, batch, torch.Generator().manual_seed(0))
    assert x.requires_grad and x.shape == (64, 4, 2, 2)
    # Backward simulation: the no-gradient chain walks the grid from 999; the one call with gradient sees each
    # sample at its own grid step, every step drawn in a batch of 64.
    simulated, (last, with_grad) = g.calls[:-1], g.calls[-1]
    assert [c[0][0] for c in simulated] == [999, 749, 499][:len(simulated)] and not any(c[1] for c in simulated)
    assert with_grad and set(last) == {999, 749, 499, 249}
    # A sample at step k = 1 got exactly: noise -> x0 at 999 -> re-noised at 749 with the next draw of the generator.
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn((64, 4, 2, 2), generator=gen)
    k = torch.randint(0, 4, (64,), generator=gen)
    run = StudentKind("v_prediction", None).on(_Recorder(), SD)
    ones = torch.ones(64)
    x0 = run(noise, torch.full((64,), 999), batch.cond, batch.uncond, ones).x0
    z1, _, _, _ = noisy(SD, x0, torch.full((64,), 749), gen)
    expected = run(z1, torch.full((64,), 749), batch.cond, batch.uncond, ones).x0
    i = int((k == 1).nonzero()[0])
    torch.testing.assert_close(x[i], expected[i])
    assert torch.equal(torch.tensor(last), torch.tensor([999, 749, 499, 249])[k])


def test_the_gan_term_moves_the_generator_not_the_fake_network():
    from snapdistill.diffusion import DiffusionModel
    from snapdistill.distill.guided import Guided
    from snapdistill.models.tiny import tiny_components

    unet = tiny_components(seed=0)["unet"]
    head = GANHead(unet.config.block_out_channels[-1])
    fake = FakeScore(unet, StudentKind("epsilon", None), SD, lr=1e-3, head=head, head_weight=0.5)
    loss = DMDLoss(real=Guided(DiffusionModel(_Const(0.3), SD, "epsilon"), None), fake=fake,
                   generator=StudentKind("epsilon", None), schedule=SD, latent_shape=(4, 8, 8), gan_weight=1e-2,
                   fake_updates=1)
    cond = torch.randn(2, 77, unet.config.cross_attention_dim)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    term = loss.gan_term(x, PromptBatch(cond=cond, uncond=cond[:1]), torch.Generator().manual_seed(0))
    term.sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in fake.module.parameters())
    assert all(p.requires_grad for p in fake.module.parameters())
    # The surrogate carries the GAN loss's value and its gradient with respect to x exactly (same draws).
    x2 = x.detach().clone().requires_grad_(True)
    direct = 1e-2 * x2[0].numel() * gan_generator_loss(fake.logits(x2, cond, cond[:1], torch.Generator().manual_seed(0)))
    (grad,) = torch.autograd.grad(direct.sum(), x2)
    torch.testing.assert_close(term.detach(), direct.detach())
    torch.testing.assert_close(x.grad, grad)
    # The fake network's update trains the head on real latents: its weights move and its loss is recorded.
    before = [p.detach().clone() for p in head.parameters()]
    fake.update(x.detach(), cond, cond[:1], torch.Generator().manual_seed(1), real=torch.randn(2, 4, 8, 8))
    assert math.isfinite(fake.last_head_loss) and any(not torch.equal(a, p) for a, p in zip(before, head.parameters()))


# ---- a tiny run through the CLI ----------------------------------------------------------------------------------

def _train(cli, out, teacher, *extra):
    return cli("distill-steps", "--mode", "dmd", "--teacher", teacher, "--out", out, "--batch-size", 2,
               "--ema-decay", 0, "--caption-dropout", 0, "--val-prompts", 0, "--fake-updates", 2, *extra)


@pytest.fixture(scope="module")
def dmd_run(tmp_path_factory, tiny_eps_dir, test_shards, run_ok):
    out = tmp_path_factory.mktemp("dmd") / "run"
    run_ok("distill-steps", "--mode", "dmd", "--teacher", tiny_eps_dir, "--shards", test_shards, "--out", out,
           "--batch-size", 2, "--max-steps", 2, "--checkpoint-every", 1, "--lr", "1e-3", "--warmup-steps", 1,
           "--fake-updates", 2, "--val-prompts", 2)
    return out


def test_student_runs_in_stock_diffusers_at_one_unet_call(dmd_run, tmp_path):
    from diffusers import StableDiffusionPipeline

    from snapdistill.sampling import stage as sample
    from snapdistill.sampling.prompts import PromptItem

    folder = dmd_run / "student"
    info = json.loads((folder / "snapdistill.json").read_text())
    assert (info["mode"], info["num_inference_steps"], info["timesteps"], info["guidance"]) == ("dmd", 1, [999], 1.0)
    assert info["prediction_type"] == "v_prediction"  # auto: a 1-step student predicts v
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    rows, timesteps = [0], []

    def hook(_m, args, kwargs):
        rows[0] += (args[0] if args else kwargs["sample"]).shape[0]
        timesteps.append(int(args[1] if len(args) > 1 else kwargs["timestep"]))

    pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    gen = torch.Generator().manual_seed(0)
    image = pipe(["a red square", "a blue square"], guidance_scale=1.0, num_inference_steps=1, height=32, width=32,
                 output_type="latent", generator=gen).images
    assert rows[0] == 2 and timesteps == [999]
    # The scheduler returns G's x0 exactly: the final alpha is 1.
    assert pipe.scheduler.config.set_alpha_to_one is True and image.shape == (2, 4, 8, 8)
    # `sample` samples it at its recorded guidance (1): one call per image, no CFG.
    m = json.loads(sample.run(sample.SampleConfig(model=str(folder), out=tmp_path / "s"),
                              [PromptItem(0, "a red square")]).read_text())
    assert m["config"]["guidance"] == 1.0 and m["metrics"]["unet_calls_per_image"] == 1


def test_inspect_counts_one_call_at_the_recorded_guidance(dmd_run, cli):
    code, out, err = cli("inspect", dmd_run / "student", "--json", "--batch-size", 1)
    assert code == 0, err
    r = json.loads(out)
    assert (r["guidance"], r["unet_calls_per_image"], r["steps"]) == (1.0, 1, 1)


def test_run_checkpoint_holds_the_fake_network_and_its_optimiser(dmd_run):
    from safetensors.torch import load_file

    from snapdistill.distill.loop import latest_checkpoint

    manifest = json.loads((dmd_run / "manifest.json").read_text())
    assert manifest["config"]["mode"] == "dmd" and manifest["config"]["dmd"]["fake_updates"] == 2
    ckpt = latest_checkpoint(dmd_run)
    generator, fake = load_file(ckpt / "model.safetensors"), load_file(ckpt / "extra.safetensors")
    assert generator.keys() == fake.keys()
    state = torch.load(ckpt / "extra_optimizer.pt", weights_only=True)
    # Two generator steps of two fake updates each: AdamW counted four steps of the fake network.
    assert {int(s["step"]) for s in state["state"].values()} == {4}
    assert (dmd_run / "val" / "step-0000002.png").is_file()


@pytest.mark.parametrize("extra", [(), ("--to", 4, "--gan-weight", "1e-2")], ids=["one-step", "four-step-gan"])
def test_resume_gives_bitwise_the_same_weights_of_both_networks(cli, tmp_path, tiny_eps_dir, test_shards, extra):
    from safetensors.torch import load_file

    flags = ("--shards", test_shards, "--max-steps", 3, "--checkpoint-every", 1, "--lr", "1e-3", "--warmup-steps", 1,
             *extra)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert _train(cli, straight, tiny_eps_dir, *flags)[0] == 0
    assert _train(cli, stopped, tiny_eps_dir, *flags)[0] == 0
    # Pretend the second run stopped after step 2: drop its last checkpoint, the student and the manifest.
    checkpoints = sorted((stopped / "checkpoints").glob("step-*"))
    shutil.rmtree(checkpoints[-1])
    (stopped / "checkpoints" / "latest").write_text(checkpoints[-2].name + "\n")
    (stopped / "manifest.json").unlink()
    shutil.rmtree(stopped / "student")
    assert _train(cli, stopped, tiny_eps_dir, *flags, "--resume", "latest")[0] == 0
    for name in ("student/unet/diffusion_pytorch_model.safetensors", "checkpoints/step-0000003/extra.safetensors",
                 "checkpoints/step-0000003/model.safetensors"):
        a, b = load_file(straight / name), load_file(stopped / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, b = (torch.load(r / "checkpoints/step-0000003/extra_optimizer.pt", weights_only=True) for r in (straight, stopped))
    assert all(torch.equal(a["state"][k]["exp_avg"], b["state"][k]["exp_avg"]) for k in a["state"])
    # And the generator actually moved from the teacher; with the GAN term the head is in the fake's checkpoint.
    teacher = load_file(tiny_eps_dir / "unet" / "diffusion_pytorch_model.safetensors")
    g = load_file(straight / "student/unet/diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(g[k], teacher[k]) for k in g)
    extra_keys = load_file(straight / "checkpoints/step-0000003/extra.safetensors").keys()
    assert any(k.startswith("head.") for k in extra_keys) == bool(extra)
    steps = json.loads((straight / "student/snapdistill.json").read_text())["timesteps"]
    assert steps == ([999, 749, 499, 249] if extra else [999])


def test_from_a_prompt_file_no_image_is_read(cli, tmp_path, tiny_eps_dir, monkeypatch):
    from snapdistill.data import shards as shard_module

    def no_images(*a, **k):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(shard_module, "decode_sample", no_images)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\n\na blue circle\na green square\n")
    out = tmp_path / "o"
    code, _, err = _train(cli, out, tiny_eps_dir, "--prompts", prompts, "--shards", tmp_path / "no-shards",
                          "--max-steps", 2, "--val-prompts", 2)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][1]["path"] == str(prompts.resolve()) and manifest["counts"]["samples"] == 4
    assert (out / "val" / "step-0000002.png").is_file()


@pytest.fixture(scope="module")
def dmd2_gan_run(tmp_path_factory, tiny_eps_dir, test_shards, run_ok):
    out = tmp_path_factory.mktemp("dmd2") / "run"
    run_ok("distill-steps", "--mode", "dmd", "--to", 2, "--gan-weight", "1e-2", "--teacher", tiny_eps_dir, "--shards",
           test_shards, "--out", out, "--batch-size", 2, "--max-steps", 2, "--checkpoint-every", 1, "--lr", "1e-3",
           "--warmup-steps", 1, "--fake-updates", 2, "--val-prompts", 2)
    return out


def test_two_step_student_samples_in_stock_diffusers_as_it_was_trained(dmd2_gan_run):
    from diffusers import LCMScheduler, StableDiffusionPipeline

    from snapdistill.diffusion import noisy
    from snapdistill.distill.guided import StudentKind

    folder = dmd2_gan_run / "student"
    info = json.loads((folder / "snapdistill.json").read_text())
    assert (info["mode"], info["num_inference_steps"], info["timesteps"]) == ("dmd", 2, [999, 499])
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe.scheduler, LCMScheduler)
    seen = []
    pipe.unet.register_forward_pre_hook(lambda _m, a, k: seen.append(int(a[1] if len(a) > 1 else k["timestep"])),
                                        with_kwargs=True)
    latent = pipe(["a red square"], guidance_scale=1.0, num_inference_steps=2, height=32, width=32,
                  output_type="latent", generator=torch.Generator().manual_seed(0)).images
    assert seen == [999, 499]
    # The training chain by hand: x0 at 999 from the pipeline's first noise draw, re-noised to 499 with the second.
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn((1, 4, 8, 8), generator=gen)
    cond = pipe.encode_prompt(["a red square"], "cpu", 1, False)[0]
    run = StudentKind(info["prediction_type"], None).on(pipe.unet, SD)
    with torch.no_grad():
        x0 = run(noise, torch.tensor([999]), cond, cond, torch.ones(1)).x0
        z = noisy(SD, x0, torch.tensor([499]), gen)[0]
        expected = run(z, torch.tensor([499]), cond, cond, torch.ones(1)).x0
    torch.testing.assert_close(latent, expected, atol=1e-5, rtol=1e-5)


def test_the_gan_head_is_checkpointed_with_the_fake_network(dmd2_gan_run):
    from safetensors.torch import load_file

    from snapdistill.distill.loop import latest_checkpoint

    extra = load_file(latest_checkpoint(dmd2_gan_run) / "extra.safetensors")
    assert any(k.startswith("head.") for k in extra) and any(k.startswith("unet.") for k in extra)
    assert json.loads((dmd2_gan_run / "manifest.json").read_text())["config"]["dmd"]["gan_weight"] == 0.01


def test_init_starts_the_generator_from_a_student(run_ok, dmd_run, tmp_path, tiny_eps_dir, test_shards):
    from safetensors.torch import load_file

    out = tmp_path / "o"
    run_ok("distill-steps", "--mode", "dmd", "--to", 2, "--init", dmd_run / "student", "--teacher", tiny_eps_dir,
           "--shards", test_shards, "--out", out, "--batch-size", 2, "--max-steps", 1, "--lr", "1e-12",
           "--ema-decay", 0, "--fake-updates", 1, "--val-prompts", 0)
    weights = "unet/diffusion_pytorch_model.safetensors"
    g, init, teacher = (load_file(f / weights) for f in (out / "student", dmd_run / "student", tiny_eps_dir))
    # One step at lr 1e-12 leaves G at its start: the student given, not the teacher; it keeps that student's type.
    assert all(torch.allclose(g[k], init[k], atol=1e-9, rtol=0) for k in g)
    assert any(not torch.allclose(g[k], teacher[k], atol=1e-6) for k in g)
    info = json.loads((out / "student" / "snapdistill.json").read_text())
    assert (info["prediction_type"], info["timesteps"]) == ("v_prediction", [999, 499])


def test_an_out_holding_the_init_student_is_refused(cli, dmd_run, tiny_eps_dir, test_shards):
    code, _, err = _train(cli, dmd_run, tiny_eps_dir, "--shards", test_shards, "--init", dmd_run / "student",
                          "--overwrite")
    assert code == 2 and err.count("\n") == 1 and "--init" in err, err
    assert (dmd_run / "student" / "unet").is_dir()  # nothing was cleared


def test_an_init_that_does_not_fit_the_teacher_is_one_line_with_nothing_written(cli, tmp_path, tiny_eps_dir,
                                                                               test_shards):
    from snapdistill.models.tiny import save_tiny_pipeline

    other = save_tiny_pipeline(tmp_path / "other", seed=0, text_dim=16)  # captions of another width
    code, _, err = _train(cli, tmp_path / "o", tiny_eps_dir, "--shards", test_shards, "--init", other)
    assert code == 2 and err.count("\n") == 1 and "its UNet's cross_attention_dim is 16, the teacher's 32" in err, err
    assert not (tmp_path / "o").exists()


def test_gan_weight_with_a_prompt_file_is_one_line(cli, tmp_path, tiny_eps_dir):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red square\n")
    code, _, err = _train(cli, tmp_path / "o", tiny_eps_dir, "--prompts", prompts, "--gan-weight", "1e-3")
    assert code == 2 and err.count("\n") == 1 and "--gan-weight needs real images" in err, err
    assert not (tmp_path / "o").exists()


def test_prompt_stream_is_seeded_and_skips_what_it_consumed():
    from snapdistill.distill.data import PromptLines

    lines = [f"p{i}" for i in range(5)]
    straight = PromptLines(lines, seed=3).batches(2)
    first = [next(straight) for _ in range(6)]  # 12 prompts: two whole epochs and a bit
    assert sorted(sum(first[:2], []) + first[2][:1]) == sorted(lines)
    resumed = PromptLines(lines, seed=3).batches(2, skip=6)
    assert [next(resumed) for _ in range(3)] == first[3:]
    assert PromptLines(lines, rank=1, world=2).prompts == ["p1", "p3"]


@pytest.mark.parametrize("extra, message", [
    (("--from", 16), "--mode dmd takes no --from"),
    (("--to", 3), "--mode dmd trains a generator of 1, 2, 4, 8 steps: set --to to one of them (got --to 3)"),
    (("--gan-weight", -1), "--gan-weight must be a finite number >= 0 (0: no GAN term), got -1.0"),
    (("--gan-head-weight", 0), "--gan-head-weight must be a finite number > 0, got 0.0"),
    (("--init", "nowhere"), "--init nowhere: no unet/config.json there"),
    (("--fake-updates", 0), "--fake-updates must be an integer >= 1, got 0"),
    (("--fake-lr", 0), "--fake-lr must be a finite number > 0, got 0.0"),
    (("--fake-lr", "nan"), "--fake-lr must be a finite number > 0, got nan"),
    (("--real-guidance", 0.5), "--real-guidance must be a finite number >= 1"),
    (("--prompts", "missing.txt"), "missing.txt: prompt file not found"),
])
def test_bad_settings_are_one_line_before_the_teacher_loads(cli, tmp_path, tiny_eps_dir, test_shards, monkeypatch,
                                                            extra, message):
    from snapdistill.distill import stage as common_stage

    def no_load(*a, **k):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(common_stage, "load_pipeline", no_load)
    code, _, err = _train(cli, tmp_path / "o", tiny_eps_dir, "--shards", test_shards, "--max-steps", 1, *extra)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_dmd_flags_without_the_mode_are_refused(cli, tmp_path, test_shards):
    code, _, err = cli("distill-steps", "--shards", test_shards, "--out", tmp_path / "o", "--real-guidance", 3)
    assert code == 2 and "--prompts, --gan-weight, --gan-head-weight and --init need --mode dmd" in err


def test_an_empty_prompt_file_is_one_line(cli, tmp_path, tiny_eps_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    code, _, err = _train(cli, tmp_path / "o", tiny_eps_dir, "--prompts", empty, "--max-steps", 1)
    assert code == 2 and err.count("\n") == 1 and "no prompts" in err, err
    assert not (tmp_path / "o").exists()


def test_dry_run_counts_the_fake_score_network(cli, tmp_path, test_shards):
    from snapdistill.models.sd_configs import save_sd_configs

    folder = save_sd_configs(tmp_path / "sd15", "sd15")
    code, _, err = cli("distill-steps", "--mode", "dmd", "--teacher", folder, "--shards", test_shards, "--out",
                       tmp_path / "o", "--resolution", 64, "--dry-run")
    assert code == 0, err
    row = next(ln for ln in err.splitlines() if "fake score network" in ln)
    value, unit = row.split()[-2:]
    # 859,520,964 parameters x 16 bytes (fp32 weights, grads, AdamW's two moments) = 12.8 GiB, plus activations.
    assert unit == "GiB" and 12.8 <= float(value) < 14
    code, _, err = cli("distill-steps", "--teacher", folder, "--shards", test_shards, "--out", tmp_path / "o",
                       "--resolution", 64, "--dry-run")
    assert code == 0 and "fake score network" not in err


def test_step_distillation_flags_without_effect_are_named(cli, tmp_path, tiny_eps_dir, test_shards, monkeypatch):
    from snapdistill.distill import stage as common_stage
    from snapdistill.errors import SnapdistillError

    def no_load(*a, **k):
        raise SnapdistillError("stopped before loading")

    monkeypatch.setattr(common_stage, "load_pipeline", no_load)
    code, _, err = _train(cli, tmp_path / "o", tiny_eps_dir, "--shards", test_shards, "--guidance-range", "3-5",
                          "--cfg-prob", 0.5)
    assert code == 2 and err.splitlines() == ["warning: --cfg-prob has no effect with --mode dmd",
                                              "warning: --guidance-range has no effect with --mode dmd",
                                              "error: stopped before loading"], err


def test_a_step_distilled_teacher_is_refused_in_one_line(cli, tmp_path, tiny_eps_dir, test_shards):
    from snapdistill.models.student_record import StudentRecord

    teacher = tmp_path / "p2"
    shutil.copytree(tiny_eps_dir, teacher)
    StudentRecord(stage="distill-steps", num_inference_steps=2, timesteps=[999, 499], mode="progressive").write(teacher)
    code, _, err = _train(cli, tmp_path / "o", teacher, "--shards", test_shards, "--max-steps", 1)
    assert code == 2 and err.count("\n") == 1 and "is a 2-step student; --mode dmd needs a teacher that denoises" in err
    assert not (tmp_path / "o").exists()
