"""recaption: clean / replace (tiny random BLIP) / keep-better (tiny random open_clip), pass-through, errors."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shardkit import relist

from snapdistill.data import build, captions
from snapdistill.data import recaption as stage
from snapdistill.data.recaption import read_samples
from snapdistill.data.sources import parse_spec

DIRTY = ["IMG_0001.JPG Red barn Royalty Free Stock Photo", "<b>blue</b> &amp; green sea | Art Print",
         "a a dog on the the beach", "clean already"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A build-data folder of 4 samples with dirty captions (2 shards), plus a shard with a broken sample."""
    from webdataset import TarWriter

    root = tmp_path_factory.mktemp("recap")
    pics = root / "pics"
    pics.mkdir()
    for i, caption in enumerate(DIRTY):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(pics / f"{i}.jpg")
        (pics / f"{i}.txt").write_text(caption)
    out = root / "shards"
    build.run(build.BuildConfig(sources=[parse_spec(f"folder:{pics}")], out=out, resolution=32, shard_size=2,
                                progress=False))
    with TarWriter(str(out / "shard-000009.tar"), encoder=False, mtime=0) as tar:
        tar.write({"__key__": "broken", "jpg": b"not a jpeg", "txt": b"IMG_1.JPG kept as is", "json": b"{oops"})
    relist(out)
    return out


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    """A tiny random BLIP captioner folder with CLIP's tokenizer, built offline."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from snapdistill.models.tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer()
    config = BlipConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                     "num_attention_heads": 4, "max_position_embeddings": 64, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "sep_token_id": tok.eos_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("blip")
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tiny_open_clip):
    """A tiny random open_clip model in open_clip's folder layout."""
    config, model, model_cfg = tiny_open_clip("snapdistill-tiny-recaption-clip", image_size=32, patch_size=8)
    folder = config.parent
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    return folder


def _by_orig(folder: Path) -> dict[str, dict]:
    return {s["txt_orig"].decode(): s for p in sorted(folder.glob("shard-00000[0-8].tar")) for s in read_samples(p)}


def test_clean_mode_rewrites_txt_keeps_txt_orig_and_passes_broken_samples(tmp_path, shards):
    manifest = json.loads(stage.run(stage.RecaptionConfig(input=shards, out=tmp_path / "clean")).read_text())
    got = _by_orig(tmp_path / "clean")
    assert {k: v["txt"].decode() for k, v in got.items()} == {
        DIRTY[0]: "Red barn", DIRTY[1]: "blue & green sea", DIRTY[2]: "a dog on the beach", DIRTY[3]: "clean already"}
    info = json.loads(got[DIRTY[0]]["json"])
    assert info["caption_source"] == "cleaned" and info["source"] == "folder" and info["caption_orig"] == DIRTY[0]
    src = {s["__key__"]: s for s in read_samples(shards / "shard-000000.tar")}
    assert all(got[k]["jpg"] == src[got[k]["__key__"]]["jpg"] for k in got if got[k]["__key__"] in src)
    broken = list(read_samples(tmp_path / "clean" / "shard-000009.tar"))
    assert broken == list(read_samples(shards / "shard-000009.tar"))  # passed through unchanged
    counts = manifest["counts"]
    assert (counts["samples"], counts["passed_through"], counts["changed"], counts["shards"]) == (5, 1, 3, 3)
    assert manifest["stage"] == "recaption" and manifest["inputs"][0]["manifest_sha256"]


def test_replace_mode_uses_the_captioner(tmp_path, shards, blip):
    from snapdistill.data.captioners import Captioner

    stage.run(stage.RecaptionConfig(input=shards, out=tmp_path / "blip", mode="replace", captioner=blip,
                                    prompt="a photo of", max_new_tokens=6, batch_size=3))
    got = _by_orig(tmp_path / "blip")
    direct = Captioner(blip, prompt="a photo of", max_new_tokens=6)
    assert len(got) == 4
    for sample in got.values():
        image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
        expected = captions.clean(direct([image])[0])
        assert sample["txt"].decode() == expected and expected.startswith("a photo of")
        info = json.loads(sample["json"])
        assert info["caption_source"] == "model" and info["caption_model"] == blip.name


def test_keep_better_picks_the_caption_closer_to_the_image(tmp_path, shards, blip, clip_dir):
    from snapdistill.data.captioners import Captioner, ClipSimilarity

    stage.run(stage.RecaptionConfig(input=shards, out=tmp_path / "best", mode="keep-better", captioner=blip,
                                    max_new_tokens=5, clip=clip_dir))
    clip = ClipSimilarity(clip_dir)
    direct = Captioner(blip, max_new_tokens=5)
    sources = set()
    for orig, sample in _by_orig(tmp_path / "best").items():
        image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
        cleaned, model = captions.clean(orig), captions.clean(direct([image])[0])
        so, sm = clip([image, image], [cleaned, model])
        info = json.loads(sample["json"])
        assert info["scores"]["clip_sim_original"] == pytest.approx(so, abs=1e-4)
        assert info["scores"]["clip_sim_model"] == pytest.approx(sm, abs=1e-4)
        assert sample["txt"].decode() == (model if sm > so else cleaned)
        sources.add(info["caption_source"])
    assert sources <= {"model", "cleaned"}


def test_bad_inputs_exit_2_with_one_line_and_no_manifest(tmp_path, shards, cli):
    (tmp_path / "notcap").mkdir()
    (tmp_path / "notcap" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "unfinished").mkdir()
    cases = [
        (["--in", shards, "--mode", "replace", "--captioner", tmp_path / "notcap"], "'bert' is not a vision-to-text model"),
        (["--in", shards, "--mode", "replace", "--captioner", tmp_path / "nowhere"], "no config.json"),
        (["--in", shards, "--mode", "replace"], "needs --captioner"),
        (["--in", shards, "--mode", "shout"], "--mode must be one of"),
        (["--in", tmp_path / "unfinished"], "no manifest.json"),
    ]
    for args, message in cases:
        code, _, err = cli("recaption", *args, "--out", tmp_path / "out")
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)
        assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.gpu
def test_replace_mode_in_fp16_on_gpu(tmp_path, shards, blip, clip_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    stage.run(stage.RecaptionConfig(input=shards, out=tmp_path / "gpu", mode="keep-better", captioner=blip,
                                    clip=clip_dir, max_new_tokens=5, dtype="fp16", device="cuda"))
    got = _by_orig(tmp_path / "gpu")
    assert len(got) == 4 and all(s["txt"] for s in got.values())
    assert {json.loads(s["json"])["caption_source"] for s in got.values()} <= {"model", "cleaned"}


@pytest.mark.parametrize("out_at, how", [("p/shards", "is"), ("p", "contains"), ("p/shards/clean", "lies inside")])
def test_out_overlapping_the_input_is_refused_and_nothing_is_touched(tmp_path, shards, cli, out_at, how):
    import shutil

    src = shutil.copytree(shards, tmp_path / "p" / "shards")
    before = {p.relative_to(src): p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file()}
    code, _, err = cli("recaption", "--in", src, "--out", tmp_path / out_at)
    assert code == 2 and err.count("\n") == 1, err
    assert f"--out {tmp_path / out_at} {how} the --in input {src}; choose an --out outside every input" in err
    assert {p.relative_to(src): p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file()} == before


def test_out_that_is_a_file_is_one_line(tmp_path, shards, cli):
    (tmp_path / "taken").write_text("mine")
    code, _, err = cli("recaption", "--in", shards, "--out", tmp_path / "taken")
    assert code == 2 and err.count("\n") == 1 and "is a file, not a folder" in err, err
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_an_unreadable_shard_is_one_line_naming_it_and_leaves_no_tmp(tmp_path, shards, cli, damage):
    import shutil

    src = shutil.copytree(shards, tmp_path / "in")
    bad = src / "shard-000005.tar"
    whole = (src / "shard-000000.tar").read_bytes()
    bad.write_bytes(b"not a tar archive " * 100 if damage == "garbage" else whole[: len(whole) // 2 + 7])
    relist(src)  # listed as it is: the damage is found by reading, not by the size check
    code, _, err = cli("recaption", "--in", src, "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{bad}: unreadable shard (" in err, err
    assert not list((tmp_path / "out").glob("*.tmp")) and not (tmp_path / "out" / "manifest.json").exists()


EVIL = ["../../evil.txt", "/abs/evil.txt", "sub/../../../evil2.jpg", "back\\slash.txt"]


def test_member_names_that_climb_out_are_rejected_as_bad_key(tmp_path, shards, cli):
    import shutil
    import tarfile

    src = shutil.copytree(shards, tmp_path / "in")
    with tarfile.open(src / "shard-000005.tar", "w") as tar:
        for name in ["fine.txt", *EVIL]:
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    relist(src)
    code, _, err = cli("recaption", "--in", src, "--out", tmp_path / "out")
    assert code == 0, err
    names = {m for p in (tmp_path / "out").glob("*.tar") for m in tarfile.open(p).getnames()}
    assert "fine.txt" in names and not names & set(EVIL)
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["key"], r["reason"], r["shard"]) for r in rejects] == [(n, "bad_key", "shard-000005.tar") for n in EVIL]
    assert all(r["detail"] for r in rejects)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["bad_key"] == 4 and manifest["outputs"]["rejects"] == "rejects.jsonl"
