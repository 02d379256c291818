import pytest
import torch

from snapdistill.errors import SnapdistillError
from snapdistill.models.loading import load_pipeline, resolve_dtype, resolve_model
from snapdistill.models.student_record import StudentRecord


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPDISTILL_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_unknown_name_lists_known_names():
    with pytest.raises(SnapdistillError, match="unknown teacher 'sd9'; known names: toy, sd15, sd21, sd21-base"):
        resolve_model("sd9")


@pytest.mark.parametrize("name, repo", [("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
                                        ("sd21-base", "stabilityai/stable-diffusion-2-1-base")])
def test_missing_weights_say_what_and_how(empty_caches, name, repo):
    with pytest.raises(SnapdistillError) as err:
        resolve_model(name)
    message = str(err.value)
    assert "\n" not in message
    assert f"hf download {repo}" in message and str(empty_caches / "models" / name) in message


def test_name_resolves_to_local_models_folder(empty_caches, tiny_eps_dir):
    import shutil

    shutil.copytree(tiny_eps_dir, empty_caches / "models" / "sd15")
    resolved = resolve_model("sd15")
    assert resolved.path == empty_caches / "models" / "sd15" and not resolved.single_file


def test_folder_and_file_checks(tmp_path, tiny_eps_dir):
    assert resolve_model(str(tiny_eps_dir)).path == tiny_eps_dir
    with pytest.raises(SnapdistillError, match="no model_index.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(SnapdistillError, match="checkpoint file not found"):
        resolve_model(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.ckpt").write_bytes(b"x")
    assert resolve_model(str(tmp_path / "model.ckpt")).single_file


def test_single_file_loads_offline_through_from_single_file(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    seen = {}

    def fake(path, **kwargs):
        seen.update(kwargs, path=path)
        raise OSError("config not in cache")

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", fake)
    ckpt = tmp_path / "mine.safetensors"
    ckpt.write_bytes(b"x")
    with pytest.raises(SnapdistillError, match="single-file checkpoint needs its base model's config"):
        load_pipeline(resolve_model(str(ckpt)))
    assert seen["local_files_only"] is True and seen["path"] == str(ckpt)


def test_dtypes():
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert resolve_dtype("fp32", "cpu") is torch.float32
    with pytest.raises(SnapdistillError, match="fp16 needs a CUDA device"):
        resolve_dtype("fp16", "cpu")
    with pytest.raises(SnapdistillError, match="unknown dtype"):
        resolve_dtype("int8", "cpu")


def test_load_pipeline_round_trip(tiny_eps_dir):
    pipe = load_pipeline(resolve_model(str(tiny_eps_dir)))
    assert pipe.safety_checker is None
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert StudentRecord.read(tiny_eps_dir) is None


def test_student_record_round_trip_keeps_the_keys_and_ignores_unknown_ones(tmp_path):
    import json

    record = StudentRecord(stage="distill-steps", num_inference_steps=8, timesteps=[999, 874], mode="direct",
                           from_steps=16, guidance_embedding=True, prediction_type="epsilon", student_arch="same")
    record.write(tmp_path)
    written = json.loads((tmp_path / "snapdistill.json").read_text())
    assert list(written) == ["stage", "num_inference_steps", "timesteps", "mode", "from_steps", "guidance_embedding",
                             "prediction_type", "student_arch"]
    (tmp_path / "snapdistill.json").write_text(json.dumps({**written, "added_later": 1}))
    assert StudentRecord.read(tmp_path) == record
    stage1 = StudentRecord(stage="distill-guidance", guidance_embedding=True, guidance_range=[2.0, 14.0])
    assert "num_inference_steps" not in stage1.to_json() and not stage1.step_distilled
    # One step count on one grid: a direct or progressive student; not a stage-1 or a consistency student.
    lcm = StudentRecord(stage="distill-steps", num_inference_steps=4, mode="consistency", original_inference_steps=50)
    assert (record.grid_steps, stage1.grid_steps, lcm.grid_steps) == (8, None, None)


def test_a_failed_download_says_it_failed_and_why(empty_caches, cli, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, local_files_only=False, **kwargs):
        if local_files_only:
            raise LocalEntryNotFoundError("not in the cache")
        try:
            raise ConnectionError("[Errno -2] Name or service not known")
        except ConnectionError as e:
            raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub") from e

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    code, _, err = cli("inspect", "sd15", "--allow-download")
    assert code == 2 and err.count("\n") == 1, err
    assert "sd15: download of stable-diffusion-v1-5/stable-diffusion-v1-5 failed (ConnectionError: [Errno -2]" in err
    assert "rerun with --allow-download" not in err
    code, _, err = cli("inspect", "sd15")
    assert code == 2 and "rerun with --allow-download" in err, err


def test_single_file_with_allow_download_does_not_suggest_it(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    def fake(path, **kwargs):
        raise OSError("could not reach the hub")

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", fake)
    ckpt = tmp_path / "mine.safetensors"
    ckpt.write_bytes(b"x")
    with pytest.raises(SnapdistillError, match="could not reach the hub.*fetching it failed") as err:
        load_pipeline(resolve_model(str(ckpt)), allow_download=True)
    assert "--allow-download" not in str(err.value)
