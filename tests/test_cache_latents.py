"""cache-latents: shards carrying each sample's latent and text embedding, and training that reads them."""

import io
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from spread import assert_rel_close

from snapdistill.data import cache_latents as stage
from snapdistill.data.images import image_tensor
from snapdistill.data.latent_cache import EMBEDDING, LATENT, decode_cached, npy_array
from snapdistill.data.recaption import read_samples
from snapdistill.data.shards import decode_sample
from snapdistill.distill.data import ShardPairs
from snapdistill.models.encoding import TextEmbeddings, encode_latents
from snapdistill.models.loading import load_pipeline, resolve_model

TRAIN = ("--max-steps", 2, "--batch-size", 4, "--val-prompts", 0, "--checkpoint-every", 0, "--ema-decay", 0,
         "--cond-dim", 32)


def _cache(cli, teacher, shards, out, *extra):
    code, _, err = cli("cache-latents", "--teacher", teacher, "--shards", shards, "--out", out, "--batch-size", 5,
                       *extra)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def cached(tmp_path_factory, tiny_eps_dir, test_shards):
    """test_shards cached for the tiny eps teacher: fp32 text embeddings, and the fp16 default."""
    root = tmp_path_factory.mktemp("cached")

    def run(out, text_dtype):
        stage.run(stage.CacheConfig(teacher=str(tiny_eps_dir), shards=test_shards, out=out, batch_size=5,
                                    text_dtype=text_dtype, progress=False))
        return out

    return {"fp32": run(root / "fp32", "fp32"), "fp16": run(root / "fp16", "fp16")}


def test_cached_shards_keep_every_sample_and_hold_the_teachers_encoding(cached, tiny_eps_dir, test_shards):
    pipe = load_pipeline(resolve_model(str(tiny_eps_dir)))
    text = TextEmbeddings(pipe.tokenizer, pipe.text_encoder)
    names = sorted(p.name for p in test_shards.glob("*.tar"))
    assert sorted(p.name for p in cached["fp16"].glob("*.tar")) == names
    for name in names:
        before = list(read_samples(test_shards / name))
        for dtype, folder in cached.items():
            after = list(read_samples(folder / name))
            assert [s["__key__"] for s in after] == [s["__key__"] for s in before]
            for old, new in zip(before, after):
                assert {k: new[k] for k in old} == old  # jpg, txt, json kept byte for byte
                image, caption = decode_sample(old)
                want = encode_latents(pipe.vae, image_tensor(image, 32)[None])[0]
                latent = np.load(io.BytesIO(new[LATENT]), allow_pickle=False)
                emb = np.load(io.BytesIO(new[EMBEDDING]), allow_pickle=False)
                assert latent.dtype == np.float32 and latent.shape == (4, 8, 8)
                assert np.allclose(latent, want.numpy(), rtol=0, atol=1e-5)
                assert emb.dtype == np.dtype(np.float16 if dtype == "fp16" else np.float32)
                assert np.allclose(emb.astype(np.float32), text([caption])[0].numpy(),
                                   rtol=1e-3 if dtype == "fp16" else 0, atol=2e-3 if dtype == "fp16" else 1e-5)
    manifest = json.loads((cached["fp16"] / "manifest.json").read_text())
    record = manifest["outputs"]["cache"]
    assert manifest["stage"] == "cache-latents" and manifest["counts"]["cached"] == 24
    assert record["resolution"] == 32 and record["latent_shape"] == [4, 8, 8] and record["text_dtype"] == "fp16"
    assert record["scaling_factor"] == pipe.vae.config.scaling_factor and len(record["vae_sha256"]) == 64
    assert not list(cached["fp16"].glob("*.tmp"))


def test_the_cached_stream_has_the_same_order_and_latents(cached, tiny_eps_dir, test_shards):
    pipe = load_pipeline(resolve_model(str(tiny_eps_dir)))
    record = json.loads((cached["fp32"] / "manifest.json").read_text())["outputs"]["cache"]
    plain = ShardPairs(sorted(map(str, test_shards.glob("*.tar"))), size=32, seed=5).batches(7, skip=3)
    fast = ShardPairs(sorted(map(str, cached["fp32"].glob("*.tar"))), size=32, seed=5, cached=record).batches(7, skip=3)
    for _ in range(6):  # past an epoch's end (24 samples)
        (pixels, _), (latents, embs) = next(plain), next(fast)
        assert latents.shape == (7, 4, 8, 8) and embs.dtype == torch.float32
        assert torch.allclose(latents, encode_latents(pipe.vae, pixels), rtol=0, atol=1e-5)


def _student(run):
    return load_file(run / "student" / "unet" / "diffusion_pytorch_model.safetensors")


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "stats.jsonl").read_text().splitlines()]


@pytest.mark.kernels
def test_training_on_cached_shards_matches_training_on_images(cli, tmp_path, cached, tiny_eps_dir, test_shards):
    runs = {}
    for name, shards in (("plain", test_shards), ("fp32", cached["fp32"]), ("fp16", cached["fp16"])):
        code, _, err = cli("distill-guidance", "--teacher", tiny_eps_dir, "--shards", shards,
                           "--out", tmp_path / name, *TRAIN)
        assert code == 0, err
        runs[name] = tmp_path / name
    # Equal up to rounding: the VAE's output depends on its batch (~2e-7 here), and Adam's first steps magnify
    # that in weights with near-zero gradients; so the updates are compared, relative to their size.
    start, plain = load_file(tiny_eps_dir / "unet" / "diffusion_pytorch_model.safetensors"), _student(runs["plain"])
    shared = [k for k in start if k in plain and start[k].shape == plain[k].shape]
    update = torch.cat([(plain[k] - start[k]).flatten() for k in shared]).norm()
    assert update > 1e-3  # the runs did train
    # Same samples, same noise: the losses agree to rounding. Largest spread measured (`make spread`, three ISA
    # settings, 1 and 2 threads): fp32 2.8e-6 (avx2, 2 threads), fp16 3.5e-5 (default, 1 thread).
    for name, rel, rtol in (("fp32", 2e-3, 3e-5), ("fp16", 1e-2, 4e-4)):
        other = _student(runs[name])
        assert sorted(other) == sorted(plain)
        gap = torch.cat([(plain[k] - other[k]).flatten() for k in plain]).norm()
        assert gap <= rel * update, (name, gap / update)
        assert_rel_close(f"cached {name} losses", _losses(runs[name]), _losses(runs["plain"]), rtol, per_entry=True)
    # The stage-1 student carries the teacher's VAE and text encoder byte for byte: stage 2 may use the cache.
    code, _, err = cli("distill-steps", "--teacher", runs["plain"] / "student", "--shards", cached["fp16"],
                       "--out", tmp_path / "steps", "--from", 4, "--to", 2, "--max-steps", 1, "--batch-size", 2,
                       "--val-prompts", 0)
    assert code == 0, err


def test_cache_from_another_teacher_or_resolution_is_refused(cli, tmp_path, cached, tiny_eps_dir, tiny_v_dir,
                                                            test_shards):
    code, _, err = cli("distill-guidance", "--teacher", tiny_v_dir, "--shards", cached["fp16"],
                       "--out", tmp_path / "v", *TRAIN)
    assert code == 2 and "cached latents were made with another VAE" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()  # refused before the run folder is made
    small = _cache(cli, tiny_eps_dir, test_shards, tmp_path / "small", "--resolution", 16)
    code, _, err = cli("distill-guidance", "--teacher", tiny_eps_dir, "--shards", small, "--out", tmp_path / "r",
                       *TRAIN)
    assert code == 2 and "made at 16 px, but this run trains at 32 px" in err
    code, _, err = cli("distill-guidance", "--teacher", tiny_eps_dir, "--shards", small, "--out", tmp_path / "r",
                       "--resolution", 16, *TRAIN)
    assert code == 0, err


def test_out_overlapping_the_input_and_a_finished_out_are_refused(cli, tmp_path, cached, tiny_eps_dir, test_shards):
    code, _, err = cli("cache-latents", "--teacher", tiny_eps_dir, "--shards", test_shards,
                       "--out", test_shards / "cached")
    assert code == 2 and "lies inside the --shards input" in err
    assert not (test_shards / "cached").exists()
    code, _, err = cli("cache-latents", "--teacher", tiny_eps_dir, "--shards", test_shards, "--out", cached["fp16"])
    assert code == 2 and "holds finished cached shards; pass --overwrite" in err
    code, _, err = cli("cache-latents", "--teacher", tiny_eps_dir, "--shards", test_shards, "--out", tmp_path / "x",
                       "--text-dtype", "int8")
    assert code == 2 and "--text-dtype must be one of fp16, fp32" in err


class _Boom:
    ran = False

    def __reduce__(self):
        return (setattr, (_Boom, "ran", True))


def test_cached_arrays_are_never_unpickled():
    buf = io.BytesIO()
    np.save(buf, np.array([_Boom()], dtype=object), allow_pickle=True)
    record = {"latent_shape": [1], "text_shape": [1]}
    with pytest.raises(ValueError):
        decode_cached({LATENT: buf.getvalue(), EMBEDDING: buf.getvalue()}, record)
    with pytest.raises(ValueError):
        npy_array(pickle.dumps(np.zeros(1)), shape=(1,))
    with pytest.raises(ValueError, match="shape"):
        npy_array(_npy(np.zeros((2, 3), np.float32)), shape=(3, 2))
    assert not _Boom.ran


def _npy(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_a_stopped_run_resumes_to_the_same_bytes_and_refuses_other_settings(cli, tmp_path, cached, tiny_eps_dir,
                                                                             tiny_v_dir, test_shards):
    out = tmp_path / "resumed"
    shutil.copytree(cached["fp16"], out)
    (out / "manifest.json").unlink()
    (out / "toy-000001.tar").unlink()
    (out / "toy-000002.tar").write_bytes(b"half")  # a shard without its stats file is not done: written again
    (out / "stats" / "toy-000002.tar.json").unlink()
    code, _, err = cli("cache-latents", "--teacher", tiny_v_dir, "--shards", test_shards, "--out", out)
    assert code == 2 and "made with other settings" in err and "vae_sha256" in err
    _cache(cli, tiny_eps_dir, test_shards, out)
    for shard in sorted(test_shards.glob("*.tar")):
        assert (out / shard.name).read_bytes() == (cached["fp16"] / shard.name).read_bytes()


def test_distill_decoder_reads_cached_latents(cli, tmp_path, cached, tiny_eps_dir, tiny_v_dir, test_shards,
                                              monkeypatch):
    """On cached shards the shards' half of each batch is the cached latents: the teacher's encoder runs once, on
    the validation images, where from the images it also runs once per step. A cache of another VAE is refused in
    one line, before the run folder is made."""
    from snapdistill.distill import decoder_stage

    calls = []
    encode = decoder_stage.encode_latents
    monkeypatch.setattr(decoder_stage, "encode_latents", lambda vae, x: calls.append(len(x)) or encode(vae, x))
    flags = ("--arch", "tiny", "--max-steps", 3, "--batch-size", 4, "--checkpoint-every", 0, "--latents-from", "images")
    for shards, out in ((cached["fp16"], tmp_path / "c"), (test_shards, tmp_path / "u")):
        code, _, err = cli("distill-decoder", "--teacher", tiny_eps_dir, "--shards", shards, "--out", out, *flags)
        assert code == 0, err
    assert calls[1:] == [calls[0], 4, 4, 4]  # the cached run: the validation images only; then 3 steps of 4
    metrics = [json.loads((tmp_path / name / "manifest.json").read_text())["metrics"] for name in ("c", "u")]
    assert [m["cached_latents"] for m in metrics] == [True, False]
    assert all(m["psnr_db"] > 0 for m in metrics)
    code, _, err = cli("distill-decoder", "--teacher", tiny_v_dir, "--shards", cached["fp16"], "--out",
                       tmp_path / "v", *flags)
    assert code == 2 and "cached latents were made with another VAE" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()
