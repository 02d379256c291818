"""build-data as a whole: faults, filters, HPS, workers, array-job split, resume, CLI errors."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snapdistill.data import build, shards, worker
from snapdistill.data.filters import FilterConfig
from snapdistill.data.sources import parse_spec


def noise(seed: int, size=(40, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def faulty(tmp_path):
    """A jsonl table of 24 good images plus one of each fault, in a fixed order."""
    pics = tmp_path / "pics"
    pics.mkdir()
    rows = []

    def add(name: str, data: bytes | None, caption: str, **meta):
        if data is not None:
            (pics / name).write_bytes(data)
        rows.append({"image": f"pics/{name}", "caption": caption, **meta})

    for i in range(24):
        add(f"good{i:02d}.jpg", jpeg(noise(i)), f"good picture {i}")
        if i == 5:
            add("truncated.jpg", jpeg(noise(100))[:500], "cut short")
            add("garbage.jpg", b"this is not an image", "garbage")
            add("missing.jpg", None, "never saved")
        if i == 11:
            add("cmyk.jpg", jpeg(noise(101).convert("CMYK")), "a cmyk picture")
            add("gray.jpg", jpeg(noise(102).convert("L")), "a gray picture")
            add("empty.jpg", jpeg(noise(103)), "   ")
            add("dup.jpg", jpeg(noise(3)), "same pixels as good 3")
    path = tmp_path / "table.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(src: Path, out: Path, **kw) -> build.BuildConfig:
    kw.setdefault("shard_size", 7)
    return build.BuildConfig(sources=[parse_spec(f"table:{src}")], out=out, resolution=32, progress=False, **kw)


def files(folder: Path) -> dict[str, bytes]:
    """Every shard and the rejects list, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".tar" or p.name == "rejects.jsonl"}


def test_faults_are_counted_listed_and_repaired(tmp_path, faulty):
    manifest = json.loads(build.run(config(faulty, tmp_path / "out")).read_text())
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    by_key = {r["key"]: (r["reason"], r["action"]) for r in rejects}
    assert by_key == {
        "6-truncated": ("undecodable", "skipped"), "7-garbage": ("undecodable", "skipped"),
        "8-missing": ("missing_file", "skipped"), "15-cmyk": ("cmyk_converted", "repaired"),
        "16-gray": ("grayscale_converted", "repaired"), "17-empty": ("no_caption", "skipped"),
        "18-dup": ("duplicate_image", "skipped"),
    }
    assert all(r["source"] == "table" for r in rejects)
    counts = manifest["counts"]
    assert counts["seen"] == 31 and counts["written"] == 26  # 24 good + the two repaired ones: nothing else lost
    assert counts["rejected"] == {"undecodable": 2, "missing_file": 1, "no_caption": 1, "duplicate_image": 1}
    assert counts["repaired"] == {"cmyk_converted": 1, "grayscale_converted": 1}
    assert counts["per_shard"] == {"shard-000000.tar": 7, "shard-000001.tar": 7, "shard-000002.tar": 7,
                                   "shard-000003.tar": 5}
    assert manifest["stage"] == "build-data" and manifest["outputs"]["shards"][-1] == "shard-000003.tar"


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_workers_give_byte_identical_output(tmp_path, faulty, monkeypatch, method):
    monkeypatch.setattr(worker, "start_method", lambda: method)
    build.run(config(faulty, tmp_path / "w1", workers=1))
    build.run(config(faulty, tmp_path / "w2", workers=2))
    one, two = files(tmp_path / "w1"), files(tmp_path / "w2")
    assert len(one) == 5 and one == two


def _samples(folder: Path) -> dict[str, dict]:
    from snapdistill.data.recaption import read_samples

    return {s["__key__"]: s for p in sorted(folder.glob("*.tar")) for s in read_samples(p)}


def test_shard_index_partition_covers_the_input_exactly_once(tmp_path, faulty):
    build.run(config(faulty, tmp_path / "all"))
    whole = _samples(tmp_path / "all")
    parts, names = {}, []
    for k in range(3):
        build.run(config(faulty, tmp_path / f"part{k}", shard_index=k, num_shards=3))
        mine = _samples(tmp_path / f"part{k}")
        assert not set(mine) & set(parts)
        assert all(int(key) % 3 == k for key in mine)  # record i of the stream goes to job i mod 3
        parts.update(mine)
        names += [p.name for p in (tmp_path / f"part{k}").glob("*.tar")]
    assert parts == whole  # same keys and byte-identical samples
    assert len(names) == len(set(names))  # shard numbers never collide across jobs


class FakeScorer:
    """Scores by caption length; records its batches (HPS itself is tested with the metrics module)."""

    def __init__(self):
        self.batches = []

    def score(self, images, prompts):
        self.batches.append((len(images), {im.size for im in images}, {im.mode for im in images}))
        return np.array([20.0 + len(p) / 2 for p in prompts])


@pytest.mark.parametrize("with_hps", [False, True])
def test_resume_after_a_crash_gives_identical_shards(tmp_path, faulty, monkeypatch, with_hps):
    extra = {"hps_threshold": 27.25, "hps_version": "v2.1"} if with_hps else {}
    scorer = FakeScorer() if with_hps else None
    build.run(config(faulty, tmp_path / "ref", **extra), scorer=scorer)
    out = tmp_path / "crashed"
    real_write = shards.ShardFile.write
    calls = {"n": 0}

    def crashing_write(self, sample):
        calls["n"] += 1
        if calls["n"] == 10:  # the first shard of 7 finished, the second half-written
            raise KeyboardInterrupt("killed")
        real_write(self, sample)

    monkeypatch.setattr(shards.ShardFile, "write", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        build.run(config(faulty, out, **extra), scorer=scorer)
    monkeypatch.setattr(shards.ShardFile, "write", real_write)
    # The half-written second shard is deleted on the way out (a SIGKILL leaves it: the resume deletes it).
    assert sorted(p.name for p in out.iterdir() if "shard" in p.name) == ["shard-000000.tar"]
    assert not (out / "manifest.json").exists()
    (out / "shard-000004.tar").write_bytes(b"half-written leftover")  # not in progress.jsonl: redone

    processed = []
    real_process = worker.process_record
    monkeypatch.setattr(worker, "process_record", lambda rec, cfg: processed.append(rec.key) or real_process(rec, cfg))
    manifest = json.loads(build.run(config(faulty, out, **extra), scorer=scorer).read_text())
    assert files(out) == files(tmp_path / "ref") and len(files(out)) > 3
    ref = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert manifest["counts"] == ref["counts"]
    if not with_hps:
        # The 7 samples of the finished shard end at input 9 (good00-05, 3 faults, good06), so the
        # resumed run starts at input 10 and never touches the finished shard's records again.
        assert processed[0] == "10-good07" and len(processed) == 31 - 10
    else:
        # With HPS the chunk holding the resume point is replayed, so its scoring batch is unchanged.
        assert processed[0] == "0-good00"


def test_a_resumed_toy_build_draws_only_the_records_after_its_last_shard(tmp_path, monkeypatch):
    """Finished records are skipped by their position in the stream (progress.jsonl), never drawn or decoded
    again: the toy stream carries captions and numbers, and images are drawn where they are loaded."""
    from snapdistill.toy import world

    def toy(out):
        return build.BuildConfig(sources=[parse_spec("toy:96")], out=out, resolution=32, shard_size=32,
                                 progress=False)

    build.run(toy(tmp_path / "ref"))
    real_write, calls = shards.ShardFile.write, {"n": 0}

    def crashing_write(self, sample):
        calls["n"] += 1
        if calls["n"] == 40:  # one shard of 32 finished, the second part-written
            raise KeyboardInterrupt("killed")
        real_write(self, sample)

    monkeypatch.setattr(shards.ShardFile, "write", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        build.run(toy(tmp_path / "out"))
    monkeypatch.setattr(shards.ShardFile, "write", real_write)
    drawn = []
    real_image = world.toy_image
    monkeypatch.setattr(world, "toy_image", lambda split, i, seed=0: drawn.append(i) or real_image(split, i, seed=seed))
    build.run(toy(tmp_path / "out"))
    assert drawn == list(range(32, 96))
    assert files(tmp_path / "out") == files(tmp_path / "ref") and len(files(tmp_path / "ref")) == 4


def test_hps_threshold_uses_the_scorer_and_records_scores(tmp_path, faulty):
    scorer = FakeScorer()
    cfg = config(faulty, tmp_path / "hps", hps_threshold=27.25, hps_version="v2.1")
    manifest = json.loads(build.run(cfg, scorer=scorer).read_text())
    # 14-character captions ("good picture 3", "a cmyk picture") score 27.0 and are dropped; 15 score 27.5.
    written = {s["txt"].decode(): json.loads(s["json"]) for s in _samples(tmp_path / "hps").values()}
    assert set(written) == {f"good picture {i}" for i in range(10, 24)} | {"same pixels as good 3"}
    assert written["good picture 10"]["scores"] == {"hps_v2.1": 27.5}
    # good 3 was dropped by HPS, so its duplicate is no longer a duplicate of anything written.
    assert written["same pixels as good 3"]["scores"] == {"hps_v2.1": 30.5}
    assert manifest["counts"]["rejected"]["hps"] == 12
    assert all(n <= build.CHUNK and sizes == {(32, 32)} and modes == {"RGB"} for n, sizes, modes in scorer.batches)


def test_metadata_and_size_filters_count_each_reason(tmp_path):
    pics = tmp_path / "p"
    pics.mkdir()
    rows = [
        ("ok", (40, 30), {}), ("small", (20, 30), {}), ("wide", (90, 30), {}),
        ("nsfw", (40, 30), {"punsafe": 0.9}), ("wm", (40, 30), {"pwatermark": 0.8}), ("ugly", (40, 30), {"aesthetic": 3.0}),
        ("long", (40, 30), {"caption": "x" * 50}), ("rep1", (40, 30), {"caption": "Same caption"}),
        ("rep2", (40, 30), {"caption": "same  caption"}), ("rep3", (40, 30), {"caption": "SAME caption"}),
    ]
    lines = []
    for i, (name, size, meta) in enumerate(rows):
        noise(i, size).save(pics / f"{name}.jpg")
        lines.append(json.dumps({"image": f"p/{name}.jpg", "caption": meta.pop("caption", f"caption {name}"), **meta}))
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    filters = FilterConfig(min_side=25, max_aspect=2.0, max_nsfw=0.5, max_watermark=0.5, min_aesthetic=5.0,
                           max_caption_chars=40, max_caption_repeats=2)
    manifest = json.loads(build.run(config(tmp_path / "t.jsonl", tmp_path / "out", filters=filters)).read_text())
    assert manifest["counts"]["rejected"] == {"min_side": 1, "aspect_ratio": 1, "nsfw": 1, "watermark": 1,
                                              "aesthetic": 1, "caption_length": 1, "caption_repeats": 1}
    assert {s["txt"] for s in _samples(tmp_path / "out").values()} == {b"caption ok", b"Same caption", b"same caption"}


def test_a_finished_build_reruns_to_the_same_result_and_refuses_other_settings(tmp_path, faulty, cli):
    out = tmp_path / "out"
    build.run(config(faulty, out))
    before = files(out)
    build.run(config(faulty, out))
    assert files(out) == before and (out / "manifest.json").is_file()
    code, _, err = cli("build-data", "--source", f"table:{faulty}", "--resolution", "64", "--shard-size", "7",
                       "--out", out, "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "other settings (resolution differ)" in err


def test_cli_builds_toy_shards(tmp_path, cli):
    pytest.importorskip("snapdistill.toy.world")
    code, out, err = cli("build-data", "--source", "toy:12", "--resolution", "32", "--shard-size", "5",
                         "--out", tmp_path / "toy", "--no-progress")
    assert code == 0, err
    assert "wrote 12 samples in 3 shards" in out
    assert sorted(p.name for p in (tmp_path / "toy").glob("*.tar")) == [f"shard-00000{i}.tar" for i in range(3)]


def _bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "nococo.json").write_text(json.dumps({"images": []}))
    pq.write_table(pa.table({"url": ["u"], "caption": ["c"]}), tmp_path / "t.parquet")
    return [
        (["--source", f"folder:{tmp_path / 'nope'}"], "image folder not found"),
        (["--source", f"coco:{tmp_path / 'nococo.json'}"], "no 'annotations' list"),
        (["--source", f"table:{tmp_path / 't.parquet'}", "--image-column", "path"], "no column 'path'"),
        (["--source", f"laion-art:{tmp_path / 't.parquet'},caption=TEXT"], "no column 'TEXT'"),
        (["--source", "toy:4", "--resolution", "0"], "--resolution must be a positive integer"),
        (["--source", "toy:4", "--max-pixels", "0"], "--max-pixels must be a positive integer"),
        (["--source", "flickr:x"], "expected KIND:PATH"),
        (["--source", "toy:4,size=3"], "unknown option 'size'"),
        (["--source", "toy:4", "--shard-index", "2", "--num-shards", "2"], "--shard-index must be in 0..1"),
        (["--source", "toy:4", "--hps-threshold", "27"], "needs --hps-version"),
    ]


def test_bad_inputs_exit_2_with_one_line_and_no_manifest(tmp_path, cli):
    for args, message in _bad_inputs(tmp_path):
        out = tmp_path / "out"
        code, _, err = cli("build-data", *args, "--out", out, "--no-progress")
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (args, err)
        assert not (out / "manifest.json").exists() and not out.exists()


def test_hps_filter_with_the_real_scorer_on_a_tiny_open_clip(tmp_path, faulty):
    hps = pytest.importorskip("snapdistill.metrics.hps")
    import open_clip
    import torch

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    scorer = hps.HPSScorer.from_model(open_clip.CLIP(**cfg), open_clip.get_tokenizer("ViT-B-32"), "v2.0")
    build.run(config(faulty, tmp_path / "probe", hps_threshold=-100.0, hps_version="v2.0"), scorer=scorer)
    probe = {s["txt"].decode(): (s, json.loads(s["json"])["scores"]["hps_v2.0"]) for s in _samples(tmp_path / "probe").values()}
    assert len(probe) == 26
    for caption, (sample, score) in list(probe.items())[:4]:  # the recorded score is the scorer's on the written image
        image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
        assert score == pytest.approx(float(scorer.score([image], [caption])[0]), abs=1e-3)
    median = float(np.median([score for _, score in probe.values()]))
    manifest = json.loads(build.run(config(faulty, tmp_path / "cut", hps_threshold=median, hps_version="v2.0"),
                                    scorer=scorer).read_text())
    kept = {s["txt"].decode() for s in _samples(tmp_path / "cut").values()}
    assert kept == {c for c, (_, score) in probe.items() if score >= median}
    assert manifest["counts"]["rejected"]["hps"] == 26 - len(kept)


def test_shard_bytes_are_webdataset_tarwriter_bytes(tmp_path):
    from webdataset import TarWriter

    samples = [{"__key__": f"{i:09d}", "jpg": bytes(range(256)) * (i + 1), "txt": f"caption {i}".encode(),
                "json": b"{}"} for i in range(5)]
    ours = shards.ShardFile(tmp_path / "ours.tar")
    for s in samples:
        ours.write(s)
    ours.close()
    with TarWriter(str(tmp_path / "wds.tar"), user=shards.OWNER, group=shards.OWNER, mode=0o444, mtime=0,
                   encoder=False) as tar:
        for s in samples:
            tar.write(s)
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "wds.tar").read_bytes()


@pytest.mark.parametrize("name", ["000000001.jpg", "a", "x" * 99 + ".", "k" * 120 + "/y.txt", "caf\u00e9.json",
                                  "000000123.latents.npy"])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 123_456_789, 8 ** 11 - 1, 8 ** 11 + 5])
def test_member_header_is_tarfiles_header(name, size):
    """The template's header equals tarfile's for short ASCII names, long names (prefix field) and non-ASCII ones
    (tarfile's own path), at sizes up to and past the 11 octal digits of the size field."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, shards.OWNER, shards.OWNER
    expected = info.tobuf(tarfile.USTAR_FORMAT) if size < 8 ** 11 else None
    if expected is None:  # tarfile refuses such a size in USTAR: so must we
        with pytest.raises(ValueError):
            shards.member_header(name, size)
        return
    assert shards.member_header(name, size) == expected


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("source, out_at, how", [
    ("folder:{d}/pics", "pics", "is"),
    ("folder:{d}/pics", "pics/shards", "lies inside"),
    ("folder:{d}/pics", ".", "contains"),
    ("table:{d}/t.jsonl", ".", "contains"),
    ("table:{d}/t.jsonl,root={d}", "shards", "lies inside"),
])
def test_out_overlapping_a_source_is_refused_and_nothing_is_touched(tmp_path, cli, source, out_at, how):
    (tmp_path / "pics").mkdir()
    for i in range(3):
        noise(i).save(tmp_path / "pics" / f"{i}.jpg")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"image": f"pics/{i}.jpg", "caption": f"c{i}"}) + "\n"
                                              for i in range(3)))
    before = _tree(tmp_path)
    out = tmp_path / out_at
    code, _, err = cli("build-data", "--source", source.format(d=tmp_path), "--resolution", "32", "--out", out,
                       "--no-progress")
    assert code == 2 and err.count("\n") == 1, err
    assert f"--out {out} {how} the --source {source.format(d=tmp_path).split(',')[0]} input" in err
    assert _tree(tmp_path) == before and not (tmp_path / "shards").exists()


def test_out_beside_a_table_in_its_default_image_root_is_allowed(tmp_path, faulty):
    """The table's own folder is its default image root: the outputs may go there, only the listed images are read."""
    assert faulty.parent == tmp_path
    build.run(config(faulty, tmp_path / "shards"))
    assert (tmp_path / "shards" / "manifest.json").is_file()


def _huge_header_jpeg(width: int, height: int) -> bytes:
    """A small JPEG whose start-of-frame claims `width` x `height` (a decompression bomb's header)."""
    data = bytearray(jpeg(noise(7)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_images_above_max_pixels_are_rejected_from_the_header_as_too_large(tmp_path, cli, monkeypatch):
    pics = tmp_path / "pics"
    pics.mkdir()
    noise(1).save(pics / "ok.jpg")
    (pics / "bomb.jpg").write_bytes(_huge_header_jpeg(60000, 60000))  # 3.6G pixels: 10.8 GB decoded
    Image.new("1", (10000, 9000)).save(pics / "wide.png")  # 90M pixels: PIL's own bomb warning
    for name in ("ok", "bomb", "wide"):
        (pics / f"{name}.txt").write_text(f"a {name} picture")
    decoded = []
    monkeypatch.setattr(worker.im, "decode_bgr", lambda data, header, *a, **k: decoded.append(header) or
                        worker.im._decode_cv(data, 1))
    code, _, err = cli("build-data", "--source", f"folder:{pics}", "--resolution", "32", "--out", tmp_path / "out",
                       "--no-progress")
    assert code == 0, err
    rejects = {r["key"]: r for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())}
    assert {k: r["reason"] for k, r in rejects.items()} == {"bomb": "too_large", "wide": "too_large"}
    assert rejects["bomb"]["detail"] == "60000x60000 pixels, above --max-pixels 89478485"
    assert [(h.width, h.height) for h in decoded] == [(40, 30)]  # the bomb was never decoded
    code, _, err = cli("build-data", "--source", f"folder:{pics}", "--resolution", "32", "--out", tmp_path / "out2",
                       "--no-progress", "--max-pixels", "1000")
    assert code == 0, err
    rejects = [json.loads(line) for line in (tmp_path / "out2" / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in rejects if r["reason"] == "too_large") == ["bomb", "ok", "wide"]


def test_a_pil_decompression_bomb_error_anywhere_is_a_too_large_reject(tmp_path, monkeypatch):
    pics = tmp_path / "pics"
    pics.mkdir()
    noise(1).save(pics / "a.jpg")
    (pics / "a.txt").write_text("a picture")

    def bomb(*args, **kwargs):
        raise Image.DecompressionBombError("Image size (200000000 pixels) exceeds limit")

    monkeypatch.setattr(worker.im, "decode_bgr", bomb)
    build.run(build.BuildConfig(sources=[parse_spec(f"folder:{pics}")], out=tmp_path / "out", resolution=32,
                                progress=False))
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["reason"], r["detail"]) for r in rejects] == [("too_large", "Image size (200000000 pixels) exceeds limit")]


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_workers_die_with_a_killed_build_data(tmp_path):
    """A worker stuck reading an image (here a FIFO no one writes, like a hung network mount) must not
    outlive a build-data killed with SIGKILL."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(4):
        noise(i).save(pics / f"{i}.jpg")
        (pics / f"{i}.txt").write_text(f"picture {i}")
    os.mkfifo(pics / "stuck.jpg")
    (pics / "stuck.txt").write_text("never read")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "snapdistill", "build-data", "--source", f"folder:{pics}",
                             "--resolution", "32", "--workers", "2", "--no-progress", "--out", tmp_path / "out"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while len(workers := _children(proc.pid)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(workers) == 2, proc.stderr.read().decode() if proc.poll() is not None else workers
        time.sleep(1.0)  # the FIFO is being opened
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid in workers if _alive(pid)]
    finally:
        proc.kill()
        proc.wait()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their killed parent"
