"""`distill-decoder`, `sample --decoder` and `inspect --decoder`: small VAE decoders of a teacher's latent space."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from snapdistill.distill.decoder_loss import DecoderLoss, psnr_db
from snapdistill.distill.decoder_stage import split_batch
from snapdistill.models import small_decoder as sd

SD15_VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
            "latent_channels": 4, "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215}


def _run(cli, teacher, shards, out, *extra):
    # The encoder's latents unless `extra` says otherwise (the last --latents-from wins): the default, mix, samples
    # 1,024 latents first.
    return cli("distill-decoder", "--teacher", teacher, "--shards", shards, "--out", out, "--max-steps", 1,
               "--batch-size", 4, "--checkpoint-every", 1, "--latents-from", "images", *extra)


@pytest.mark.parametrize("channels, width, groups, want", [
    ([128, 256, 512, 512], 0.5, 32, [64, 128, 256, 256]), ([32, 32, 64], 0.5, 8, [16, 16, 32]),
    ([16, 32, 32], 0.3, 8, [8, 8, 8]), ([128, 256], 0.01, 32, [32, 32]), ([96], 1.0, 32, [96])])
def test_reduced_channels_are_multiples_of_the_groups(channels, width, groups, want):
    assert sd.reduced_channels(channels, width, groups) == want


@pytest.mark.parametrize("config", [SD15_VAE, {**SD15_VAE, "block_out_channels": [16, 32, 32], "norm_num_groups": 8,
                                               "layers_per_block": 1, "down_block_types": ["DownEncoderBlock2D"] * 3,
                                               "up_block_types": ["UpDecoderBlock2D"] * 3}])
@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
def test_kl_decoder_parameters_in_closed_form(config, width):
    """The closed form against the built model; the SD 1.5 decoder (with post_quant_conv) is 49,490,199."""
    from diffusers import AutoencoderKL

    small = sd.kl_config(config, width)
    if config is SD15_VAE and width == 1.0:
        assert sd.kl_decoder_parameters(small) == 49_490_199
    if config is SD15_VAE and width == 0.5:
        assert small["block_out_channels"] == [64, 128, 256, 256]
    with torch.device("meta"):
        model = AutoencoderKL(**small)
    assert sd.decoder_parameters(model) == sd.kl_decoder_parameters(small)


def test_half_width_is_about_a_quarter_of_the_parameters():
    full, half = sd.kl_decoder_parameters(SD15_VAE), sd.kl_decoder_parameters(sd.kl_config(SD15_VAE, 0.5))
    assert 0.24 < half / full < 0.26


@pytest.mark.parametrize("arch", sd.ARCHS)
def test_small_decoder_shapes(tiny_eps_dir, arch):
    """Both layouts map the teacher's latents [B,4,8,8] to [B,3,32,32] and downsample as the teacher does."""
    from diffusers import AutoencoderKL

    teacher = AutoencoderKL.from_pretrained(tiny_eps_dir / "vae")
    small = sd.build_small(arch, teacher.config, 0.5)
    z = torch.randn(2, 4, 8, 8)
    assert sd.to_pixels(small, z).shape == (2, 3, 32, 32)
    assert sd.to_latents(small, torch.zeros(2, 3, 32, 32)).shape == (2, 4, 8, 8)
    assert sd.decoder_parameters(small) < 0.5 * sd.decoder_parameters(teacher)
    want = teacher.config.scaling_factor if arch == "kl" else 1.0  # TAESD decodes diffusion-space latents
    assert small.config.scaling_factor == want


def test_an_arch_narrower_than_the_latents_is_refused():
    wide_latents = {**SD15_VAE, "block_out_channels": [16, 32, 32], "norm_num_groups": 8, "latent_channels": 16}
    with pytest.raises(Exception, match="cannot take the teacher's 16 latent channels"):
        sd.check_fits("kl", wide_latents, 0.5)
    sd.check_fits("kl", wide_latents, 1.0)


def test_psnr_closed_form():
    a = torch.zeros(1, 3, 4, 4)
    assert math.isclose(float(psnr_db(a, a + 0.02)), 10 * math.log10(4 / 0.0004), rel_tol=1e-5)


def test_losses_per_sample_and_pixel_choice():
    class Identity(torch.nn.Module):  # decodes x -> x, scaling 1
        config = type("C", (), {"scaling_factor": 1.0})()

        def decode(self, z):
            return type("O", (), {"sample": z})()

    z, target = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    target[1] = 0.5
    for pixel, want in (("l1", 0.5), ("l2", 0.25)):
        loss = DecoderLoss(pixel=pixel, encoder_weight=0)(Identity(), latents=z, target=target, images=z,
                                                             image_latents=z)
        assert loss.tolist() == [0.0, want]


@pytest.mark.parametrize("fixture, arch", [("tiny_eps_dir", "kl"), ("tiny_v_dir", "tiny")])
def test_one_step_of_each_arch_saves_a_stock_diffusers_folder(request, cli, tmp_path, test_shards, fixture, arch):
    """SD 1.5 (eps) and SD 2.1 (v) tiny teachers: one optimiser step changes the weights; the folder loads in
    stock diffusers with the teacher's latent space recorded."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    teacher = request.getfixturevalue(fixture)
    out = tmp_path / "dec"
    code, _, err = _run(cli, teacher, test_shards, out, "--arch", arch, "--ema-decay", 0)
    assert code == 0, err
    cls = AutoencoderKL if arch == "kl" else AutoencoderTiny
    small = cls.from_pretrained(out / "decoder")
    teacher_vae = AutoencoderKL.from_pretrained(teacher / "vae")
    if arch == "tiny":  # the key AutoencoderTiny registers itself is not saved (diffusers would warn on each load)
        assert "block_out_channels" not in json.loads((out / "decoder" / "config.json").read_text())
        assert list(small.config.block_out_channels) == list(small.config.decoder_block_out_channels)
    fresh = sd.build_small(arch, teacher_vae.config, 0.5)
    changed = [k for k, v in small.state_dict().items() if not torch.equal(v, fresh.state_dict()[k])]
    assert changed and any("decoder" in k for k in changed)
    record = json.loads((out / "decoder" / "decoder.json").read_text())
    assert record["teacher_scaling_factor"] == teacher_vae.config.scaling_factor and record["arch"] == arch
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "distill-decoder" and manifest["counts"]["steps"] == 1
    assert manifest["metrics"]["decoder_parameters"] == sd.decoder_parameters(small)
    assert len((out / "stats.jsonl").read_text().splitlines()) == 1
    assert (out / "val" / "step-0000001.png").is_file()


@pytest.mark.parametrize("source", [("--latents-from", "images"),
                                    ("--latents-from", "mix", "--sample-count", 6, "--sample-steps", 2)],
                         ids=["images", "mix"])
def test_resume_is_bit_for_bit(cli, tmp_path, tiny_eps_dir, test_shards, source):
    from safetensors.torch import load_file

    args = ("--max-steps", 4, "--checkpoint-every", 2, *source)
    straight, stopped = tmp_path / "a", tmp_path / "b"
    for out in (straight, stopped):
        code, _, err = cli("distill-decoder", "--teacher", tiny_eps_dir, "--shards", test_shards, "--out", out,
                           "--batch-size", 4, *args)
        assert code == 0, err
    # Make b a run stopped at step 2, then resume it.
    for name in ("manifest.json",):
        (stopped / name).unlink()
    shutil.rmtree(stopped / "decoder")
    shutil.rmtree(stopped / "checkpoints" / "step-0000004")
    (stopped / "checkpoints" / "latest").write_text("step-0000002\n")
    code, _, err = cli("distill-decoder", "--teacher", tiny_eps_dir, "--shards", test_shards, "--out", stopped,
                       "--batch-size", 4, *args, "--resume", "latest")
    assert code == 0, err
    a = load_file(straight / "decoder" / "diffusion_pytorch_model.safetensors")
    b = load_file(stopped / "decoder" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tiny_eps_dir):
    """A tiny folder shaped like a step-distilled student (snapdistill.json beside the pipeline)."""
    folder = shutil.copytree(tiny_eps_dir, tmp_path_factory.mktemp("student") / "student")
    (folder / "snapdistill.json").write_text(json.dumps({"stage": "distill-steps", "num_inference_steps": 2,
                                                         "timesteps": [999, 499]}))
    return folder


@pytest.fixture(scope="module")
def tiny_decoder_run(tmp_path_factory, tiny_eps_dir, test_shards, student_dir):
    from snapdistill.distill import decoder_stage
    from snapdistill.distill.loop import TrainConfig

    out = tmp_path_factory.mktemp("dec-run") / "dec"
    decoder_stage.run(decoder_stage.DecoderConfig(
        teacher=str(tiny_eps_dir), shards=test_shards, out=out, arch="tiny", into=student_dir, latents_from="images",
        train=TrainConfig(max_steps=2, batch_size=4)))
    return out


def test_into_writes_a_student_with_the_small_vae(tiny_decoder_run, student_dir):
    from diffusers import AutoencoderTiny, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_decoder_run / "student")
    assert isinstance(pipe.vae, AutoencoderTiny) and pipe.vae_scale_factor == 4
    assert (tiny_decoder_run / "student" / "snapdistill.json").read_text() == (student_dir / "snapdistill.json").read_text()
    image = pipe("a red square", num_inference_steps=2, guidance_scale=1.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and 0 <= image.min() and image.max() <= 1


def test_sample_with_the_small_decoder(cli, tmp_path, tiny_decoder_run, student_dir):
    from diffusers import AutoencoderTiny

    from snapdistill.sampling.render import to_uint8

    out = tmp_path / "s"
    code, _, err = cli("sample", "--teacher", student_dir, "--decoder", tiny_decoder_run / "decoder", "--prompt",
                       "a red square", "--out", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["decoder"] == str((tiny_decoder_run / "decoder").resolve())
    assert manifest["inputs"][1]["role"] == "decoder"
    # The image is the small decoder's decoding of the student's latents.
    import numpy as np
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from snapdistill.sampling.config import SampleConfig
    from snapdistill.sampling.render import generate, resolve_settings

    pipe = StableDiffusionPipeline.from_pretrained(student_dir, safety_checker=None, requires_safety_checker=False)
    pipe.vae = AutoencoderTiny.from_pretrained(tiny_decoder_run / "decoder")
    settings, pipe.scheduler = resolve_settings(SampleConfig(model=str(student_dir), out=out), pipe, student_dir)
    want = to_uint8(generate(pipe, ["a red square"], [0], steps=settings["steps"], guidance=7.5, size=32))[0]
    got = np.asarray(Image.open(out / "images" / "00000-s0.png"))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_inspect_reports_the_decoder(cli, tiny_decoder_run, student_dir):
    code, out, err = cli("inspect", student_dir, "--decoder", tiny_decoder_run / "decoder", "--batch-size", 1, "--json")
    assert code == 0, err
    r = json.loads(out)
    manifest = json.loads((tiny_decoder_run / "manifest.json").read_text())
    assert r["decoder_parameters"] == manifest["metrics"]["decoder_parameters"]
    assert r["s_per_decode"] > 0 and r["s_per_unet_call"] > 0
    code, out, _ = cli("inspect", student_dir, "--batch-size", 1, "--json")
    assert json.loads(out)["decoder_parameters"] == manifest["metrics"]["teacher_decoder_parameters"]


@pytest.mark.parametrize("flag, value, message", [
    ("--width", "0", "--width must be in (0, 1]"), ("--width", "1.5", "--width must be in (0, 1]"),
    ("--width", "nan", "--width must be in (0, 1]"), ("--arch", "vq", "unknown --arch 'vq'"),
    ("--loss", "l3", "unknown --loss 'l3'"), ("--latents-from", "noise", "unknown --latents-from 'noise'")])
def test_bad_settings_are_one_line_exit_2(cli, tmp_path, tiny_eps_dir, test_shards, flag, value, message):
    code, _, err = _run(cli, tiny_eps_dir, test_shards, tmp_path / "dec", flag, value)
    assert code == 2 and err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "dec").exists()


def test_into_a_folder_that_is_not_a_student(cli, tmp_path, tiny_eps_dir, test_shards):
    code, _, err = _run(cli, tiny_eps_dir, test_shards, tmp_path / "dec", "--into", tiny_eps_dir)
    assert code == 2 and "not a student folder" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("edit", ["scaling", "channels"])
def test_a_decoder_of_another_teacher_is_refused(cli, tmp_path, tiny_decoder_run, student_dir, edit):
    other = shutil.copytree(tiny_decoder_run / "decoder", tmp_path / "other")
    if edit == "scaling":
        record = json.loads((other / "decoder.json").read_text())
        (other / "decoder.json").write_text(json.dumps({**record, "teacher_scaling_factor": 0.13025}))
    else:
        from diffusers import AutoencoderTiny

        AutoencoderTiny(latent_channels=16, encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                        num_encoder_blocks=(1, 3, 3), num_decoder_blocks=(3, 3, 1)).save_pretrained(other)
        (other / "decoder.json").unlink()
    code, _, err = cli("sample", "--teacher", student_dir, "--decoder", other, "--prompt", "a", "--out", tmp_path / "s")
    assert code == 2 and "trained for another teacher" in err and len(err.strip().splitlines()) == 1
    assert ("scaling factor" if edit == "scaling" else "latent channels 16 vs 4") in err


@pytest.mark.parametrize("source, batch, want", [("images", 4, (0, 4)), ("sample", 4, (4, 0)), ("mix", 4, (2, 2)),
                                                 ("mix", 5, (2, 3)), ("mix", 1, (0, 1))])
def test_split_batch(source, batch, want):
    assert split_batch(source, batch) == want


def test_latents_from_a_sampler(cli, tmp_path, tiny_eps_dir, test_shards):
    out = tmp_path / "dec"
    code, _, err = _run(cli, tiny_eps_dir, test_shards, out, "--latents-from", "sample", "--sample-count", 8,
                        "--sample-steps", 2)
    assert code == 0, err
    from safetensors.torch import load_file

    assert load_file(out / "sampled-latents.safetensors")["latents"].shape == (8, 4, 8, 8)


def test_bench_decoder_figures(tmp_path):
    """The bench's decoder section on the shipped toy teacher: a half-width kl decoder's parameter ratio is the
    closed form's, the teacher's own decoder under the small one's name gives a PSNR far above any real decoder's
    (identical outputs, clamped to 1e-12 MSE: 126 dB), and both decoders are timed (positive seconds)."""
    from snapdistill.bench.toy import DECODER_RUN, decoder_figures
    from snapdistill.distill.decoder_stage import save_decoder
    from snapdistill.toy.paths import load_toy_teacher

    teacher = load_toy_teacher().vae.eval()
    run = tmp_path / DECODER_RUN
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    small = sd.build_small("kl", teacher.config, 0.5)
    save_decoder(small, run / "decoder", teacher_vae=teacher, arch="kl", width=0.5, teacher="toy")
    figures = decoder_figures(tmp_path, {}, n=32)
    config = sd.teacher_vae_config(teacher.config)
    want = sd.kl_decoder_parameters(sd.kl_config(config, 0.5)) / sd.kl_decoder_parameters(config)
    assert figures["decoder_params"] == pytest.approx(want)
    assert figures["decoder_psnr_db"] < 30  # random weights
    assert figures["decoder_s_per_image"] > 0 and figures["teacher_decoder_s_per_image"] > 0
    assert figures["decoder_speedup"] == pytest.approx(
        figures["teacher_decoder_s_per_image"] / figures["decoder_s_per_image"])
    shutil.rmtree(run / "decoder")
    save_decoder(teacher, run / "decoder", teacher_vae=teacher, arch="kl", width=1.0, teacher="toy")
    same = decoder_figures(tmp_path, {}, n=32)
    assert same["decoder_params"] == 1.0 and same["decoder_psnr_db"] == pytest.approx(126.02, abs=0.01)
