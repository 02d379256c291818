"""The toy teacher: its pipeline folder, resumable training, broken-weights errors and shipped quality."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from snapdistill.errors import SnapdistillError
from snapdistill.toy import pipeline as P
from snapdistill.toy import teacher as T
from snapdistill.toy.paths import WEIGHTS_DIR, load_toy_teacher, toy_teacher_dir

_TINY_UNET = {
    **T.UNET_CONFIG,
    "block_out_channels": [32, 32, 32],
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
}
_TINY_TEXT = {**T.TEXT_CONFIG, "hidden_size": 32, "intermediate_size": 64}


def _tiny_recipe(**kw) -> T.TeacherRecipe:
    return T.TeacherRecipe(
        steps=4, batch=4, n_train=16, warmup=2, unet=dict(_TINY_UNET), text=dict(_TINY_TEXT), **kw
    )


@pytest.fixture(scope="module")
def random_teacher_dir(tmp_path_factory):
    """A randomly initialised toy-architecture pipeline, saved the way the shipped one is."""
    from snapdistill.toy.vae import build_vae

    text_encoder, unet = T.build_models(_tiny_recipe())
    folder = tmp_path_factory.mktemp("toy-teacher")
    P.save_pipeline(P.build_pipeline(build_vae(), text_encoder, unet), folder)
    (folder / "manifest.json").write_text("{}", encoding="utf-8")
    return folder


def test_saved_pipeline_is_stock_float32_with_clip_ids(random_teacher_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(toy_teacher_dir(random_teacher_dir))
    assert pipe.tokenizer("red").input_ids == [49406, 736, 49407]
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    assert pipe.safety_checker is None
    sched = pipe.scheduler.config
    assert (sched.algorithm_type, sched.timestep_spacing) == (
        "dpmsolver++",
        P.SAMPLER_CONFIG["timestep_spacing"],
    )
    assert sched.beta_schedule == "scaled_linear" and sched.prediction_type == "epsilon"
    # The UNet weights are stored in fp16.
    from safetensors import safe_open

    with safe_open(str(random_teacher_dir / "unet/diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16


def test_samples_depend_on_their_own_seed_only(random_teacher_dir):
    pipe = load_toy_teacher(random_teacher_dir)
    prompts = ["a red circle on the left, white background", "a blue square at the top, black background"]
    both = P.sample_images(pipe, prompts, steps=2, guidance=7.5, seed=3)
    second = P.sample_images(pipe, prompts[1:], steps=2, guidance=7.5, seed=4)
    assert both.shape == (2, 3, 32, 32)
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=0)


def test_resuming_gives_the_same_weights_as_not_stopping(tmp_path):
    from snapdistill.toy.vae import build_vae

    vae = build_vae().eval().requires_grad_(False)
    log = lambda msg: None  # noqa: E731
    _, straight, done, _ = T.train_teacher(tmp_path / "a", vae, _tiny_recipe(), log=log)
    assert done
    _, _, done, state = T.train_teacher(tmp_path / "b", vae, _tiny_recipe(), stop_at=2, log=log)
    assert not done and state["step"] == 2
    _, resumed, done, _ = T.train_teacher(tmp_path / "b", vae, _tiny_recipe(), log=log)
    assert done
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(ValueError, match="another recipe"):
        T.train_teacher(tmp_path / "b", vae, _tiny_recipe(lr=5e-4), log=log)
    # A run exported at an earlier stop_step continues on the same trajectory to a later one.
    _, _, done, state = T.train_teacher(tmp_path / "c", vae, _tiny_recipe(stop_step=3), log=log)
    assert done and state["step"] == 3
    _, continued, done, state = T.train_teacher(tmp_path / "c", vae, _tiny_recipe(stop_step=None), log=log)
    assert done and state["step"] == 4
    for (name, a), b in zip(straight.state_dict().items(), continued.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_broken_teacher_weights_say_how_to_rebuild(random_teacher_dir, tmp_path, damage):
    folder = tmp_path / "teacher"
    shutil.copytree(random_teacher_dir, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:4096])
    else:
        weights.unlink()
    with pytest.raises(SnapdistillError) as err:
        load_toy_teacher(folder)
    msg = str(err.value)
    assert "unet/diffusion_pytorch_model.safetensors" in msg
    assert msg.endswith("missing or corrupted toy weights; rebuild with `snapdistill toy teacher`")


def test_toy_training_to_unwritable_out_is_one_line_exit_2(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli("toy", "teacher", "--out", blocker / "teacher", "--minutes", "0")
    assert code == 2
    assert err.strip().count("\n") == 0 and "output folder is not writable" in err and "choose another --out" in err


def test_toy_teacher_out_inside_its_work_folder_is_refused(cli, tmp_path):
    code, _, err = cli("toy", "teacher", "--out", tmp_path / "w" / "export", "--work", tmp_path / "w", "--minutes", "0")
    assert code == 2 and err.strip().count("\n") == 0 and "lies inside the --work input" in err
    assert not (tmp_path / "w").exists()


# The shipped teacher -------------------------------------------------------------------------

_SHIPPED = WEIGHTS_DIR / "teacher"
needs_shipped = pytest.mark.skipif(
    not (_SHIPPED / "manifest.json").is_file(),
    reason="the toy teacher is not shipped yet (train it with `snapdistill toy teacher`)",
)


@needs_shipped
def test_shipped_teacher_manifest_records_a_complete_measured_recipe():
    manifest = json.loads((toy_teacher_dir() / "manifest.json").read_text(encoding="utf-8"))
    ev = manifest["metrics"]["eval"]
    assert manifest["metrics"]["n_eval"] >= 1024
    assert ev["s4_g7.5"]["exact"] <= ev["s16_g7.5"]["exact"] - 0.1  # steps matter
    assert manifest["config"]["recipe"]["sampler"]["timestep_spacing"] == P.SAMPLER_CONFIG["timestep_spacing"]
    size = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert size <= 25 * 2**20


@needs_shipped
def test_shipped_teacher_meets_the_guidance_bars():
    ev = json.loads((toy_teacher_dir() / "manifest.json").read_text(encoding="utf-8"))["metrics"]["eval"]
    assert ev["s16_g7.5"]["exact"] >= 0.80
    assert ev["s16_g1.0"]["exact"] <= ev["s16_g7.5"]["exact"] - 0.1


@needs_shipped
def test_shipped_teacher_follows_captions_and_needs_guidance():
    from snapdistill.toy.judge import judge_images
    from snapdistill.toy.paths import load_judge
    from snapdistill.toy.world import toy_val_prompts

    pipe, judge = load_toy_teacher(), load_judge()
    assert pipe.tokenizer("red").input_ids == [49406, 736, 49407]
    prompts = toy_val_prompts(64)
    cfg = judge_images(judge, P.sample_images(pipe, prompts, steps=16, guidance=7.5), prompts)
    plain = judge_images(judge, P.sample_images(pipe, prompts, steps=16, guidance=1.0), prompts)
    assert cfg["exact"] >= 0.9  # the teacher draws what the caption says ...
    assert cfg["exact"] >= plain["exact"] + 0.1  # ... once guided
