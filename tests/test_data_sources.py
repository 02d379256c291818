"""Every source adapter on small fixtures in the layouts the data sets really ship in, then one mixed
build read back with plain `webdataset`."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from snapdistill.data import build
from snapdistill.data.sources import open_source, parse_spec
from snapdistill.data.sources.mix import mix
from snapdistill.errors import SnapdistillError


def image(seed: int, size=(48, 40), mode="RGB") -> Image.Image:
    """Distinct noise per seed, so no two fixtures are duplicates."""
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def save(path: Path, seed: int, fmt="JPEG", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image(seed, **kw).save(path, fmt)
    return path


def listing(spec: str) -> list[tuple]:
    """(key, caption, fault) of every record a source yields."""
    return [(r.key, r.caption, r.fault) for r in open_source(parse_spec(spec)).records]


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco"
    for i in (1, 2):
        save(root / "val2017" / f"{i:012d}.jpg", i)
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 48, "height": 40} for i in (1, 2, 3)],
        # Annotation order differs from image order: "first caption" means first in the file per image.
        "annotations": [{"image_id": 2, "id": 10, "caption": "two first"}, {"image_id": 1, "id": 11, "caption": "one first"},
                        {"image_id": 1, "id": 12, "caption": "one second"}, {"image_id": 3, "id": 13, "caption": "three"}],
    }
    path = root / "annotations" / "captions_val2017.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return path


def test_coco_first_caption_or_every_caption(coco):
    assert listing(f"coco:{coco}") == [("1", "one first", None), ("2", "two first", None), ("3", "three", None)]
    assert [k for k, _, _ in listing(f"coco:{coco},captions=all")] == ["1_11", "1_12", "2_10", "3_13"]
    rec = next(iter(open_source(parse_spec(f"coco:{coco}")).records))
    assert rec.image.path.endswith("coco/val2017/000000000001.jpg") and rec.meta["annotation_id"] == 11


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def img2dataset(tmp_path):
    """img2dataset webdataset output: 00000.tar + 00000.parquet + 00000_stats.json, with a failed download."""
    root = tmp_path / "laion"
    root.mkdir()
    rows = []
    for n, status in enumerate(["success", "failed_to_download", "success"]):
        key = f"{n:09d}"
        rows.append({"url": f"http://x/{n}.jpg", "caption": f"laion caption {n}", "key": key, "status": status,
                     "error_message": "HTTP Error 404" if status != "success" else None, "width": 48, "height": 40,
                     "original_width": 480, "original_height": 400, "exif": "{}", "sha256": "ab",
                     "similarity": 0.31, "punsafe": 0.9 if n == 2 else 0.01, "pwatermark": 0.2, "aesthetic": 6.5})
    with tarfile.open(root / "00000.tar", "w") as tar:
        for row in rows:
            if row["status"] == "success":
                buf = io.BytesIO()
                image(100 + int(row["key"])).save(buf, "JPEG")
                _tar_member(tar, f"{row['key']}.jpg", buf.getvalue())
                _tar_member(tar, f"{row['key']}.txt", row["caption"].encode())
                _tar_member(tar, f"{row['key']}.json", json.dumps(row).encode())
    pq.write_table(pa.Table.from_pylist(rows), root / "00000.parquet")
    (root / "00000_stats.json").write_text(json.dumps({"count": 3, "successes": 2, "failed_to_download": 1,
                                                       "failed_to_resize": 0}))
    return root


def test_laion_img2dataset_layout_keeps_metadata_and_lists_failed_downloads(img2dataset):
    opened = open_source(parse_spec(f"laion-art:{img2dataset}"))
    recs = list(opened.records)
    assert [(r.key, r.caption, r.fault) for r in recs] == [
        ("000000000", "laion caption 0", None), ("000000001", "laion caption 1", "download_failed"),
        ("000000002", "laion caption 2", None)]
    assert recs[1].detail == "failed_to_download: HTTP Error 404"
    assert {"similarity", "punsafe", "pwatermark", "aesthetic", "original_width"} <= set(recs[0].meta)
    assert "exif" not in recs[0].meta and recs[2].meta["punsafe"] == 0.9
    assert opened.info["img2dataset_stats"] == {"count": 3, "successes": 2, "failed_to_download": 1, "failed_to_resize": 0}
    assert recs[0].image.load()[:2] == b"\xff\xd8"  # read from the tar by offset


def test_img2dataset_members_named_outside_the_tar_are_bad_key_rejects(img2dataset, tmp_path, cli):
    """Names that are absolute, climb with `..` or hold a backslash never become samples."""
    evil = ["../../evil", "/abs/evil", "sub/../../../evil2", "back\\slash"]
    (img2dataset / "00000.parquet").unlink()  # without a parquet every key in the tar is a row
    with tarfile.open(img2dataset / "00001.tar", "w") as tar:
        for n, key in enumerate(evil):
            buf = io.BytesIO()
            image(200 + n).save(buf, "JPEG")
            _tar_member(tar, f"{key}.jpg", buf.getvalue())
            _tar_member(tar, f"{key}.txt", b"an evil caption")
    code, _, err = cli("build-data", "--source", f"laion-art:{img2dataset}", "--resolution", "32",
                       "--out", tmp_path / "out", "--no-progress")
    assert code == 0, err
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["key"], r["reason"]) for r in rejects] == [(k, "bad_key") for k in evil]
    assert all(r["detail"].startswith(f"{k}.jpg: ") for r, k in zip(rejects, evil))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["written"] == 2 and manifest["counts"]["rejected"] == {"bad_key": 4}


def test_laion_plain_parquet_with_image_folder_keyed_by_row(tmp_path):
    pq.write_table(pa.table({"URL": ["u0", "u1", "u2"], "TEXT": ["zero", "one", "two"], "punsafe": [0.1, 0.2, 0.3]}),
                   tmp_path / "part.parquet")
    save(tmp_path / "part" / "000000000.jpg", 1)
    save(tmp_path / "part" / "1.png", 2, fmt="PNG")
    assert listing(f"laion-art:{tmp_path / 'part.parquet'}") == [
        ("000000000", "zero", None), ("000000001", "one", None), ("000000002", "two", "missing_file")]
    with pytest.raises(SnapdistillError, match="no column 'caption_text'"):
        open_source(parse_spec(f"laion-art:{tmp_path / 'part.parquet'},caption=caption_text"))


@pytest.fixture
def diffusiondb(tmp_path):
    root = tmp_path / "ddb"
    part = root / "images" / "part-000001"
    for n, name in enumerate(["aaa.png", "bbb.png"]):
        save(part / name, 200 + n, fmt="PNG")
    (part / "part-000001.json").write_text(json.dumps({
        "aaa.png": {"p": "a castle, artstation", "se": 11, "c": 7.0, "st": 50, "sa": "k_lms"},
        "bbb.png": {"p": "a cat", "se": 12, "c": 9.0, "st": 30, "sa": "k_euler"}}))
    return root


def test_diffusiondb_part_json(diffusiondb):
    recs = list(open_source(parse_spec(f"diffusiondb:{diffusiondb}")).records)
    assert [(r.key, r.caption) for r in recs] == [("aaa", "a castle, artstation"), ("bbb", "a cat")]
    assert recs[0].meta == {"seed": 11, "cfg": 7.0, "step": 50, "sampler": "k_lms", "part_id": 1, "image_name": "aaa.png"}


def test_diffusiondb_metadata_parquet_wins_and_skips_parts_not_on_disk(diffusiondb):
    cols = ["image_name", "prompt", "part_id", "seed", "step", "cfg", "sampler", "width", "height", "user_name",
            "timestamp", "image_nsfw", "prompt_nsfw"]
    rows = [["bbb.png", "a cat", 1, 12, 30, 9.0, "k_euler", 48, 40, "u1", None, 0.8, 0.1],
            ["zzz.png", "elsewhere", 2, 1, 1, 1.0, "k_lms", 48, 40, "u2", None, 0.0, 0.0],  # part 2 not downloaded
            ["ccc.png", "lost", 1, 13, 30, 9.0, "k_lms", 48, 40, "u3", None, 0.0, 0.0]]  # file missing
    pq.write_table(pa.Table.from_pylist([dict(zip(cols, r)) for r in rows]), diffusiondb / "metadata.parquet")
    recs = list(open_source(parse_spec(f"diffusiondb:{diffusiondb}")).records)
    assert [(r.key, r.caption) for r in recs] == [("bbb", "a cat"), ("ccc", "lost")]
    assert recs[0].meta["image_nsfw"] == 0.8 and recs[0].meta["user_name"] == "u1"
    assert not Path(recs[1].image.path).exists()


@pytest.fixture
def hpdv2(tmp_path):
    root = tmp_path / "HPDv2"
    for i in range(4):
        save(root / "train" / f"{i:05d}.jpg", 300 + i)
    entries = [
        {"prompt": "first prompt", "image_path": ["00000.jpg", "00001.jpg"], "human_preference": [0, 1], "user_hash": "u"},
        {"prompt": "second prompt", "image_path": ["00002.jpg", "00003.jpg"], "human_preference": [1, 0], "user_hash": "v"},
    ]
    (root / "train.json").write_text(json.dumps(entries))
    return root / "train.json"


def test_hpsv2_preferred_or_all(hpdv2):
    assert listing(f"hpsv2:{hpdv2}") == [("00001", "first prompt", None), ("00002", "second prompt", None)]
    recs = list(open_source(parse_spec(f"hpsv2:{hpdv2},pick=all")).records)
    assert [(r.key, r.meta["preferred"]) for r in recs] == [("00000", False), ("00001", True), ("00002", True), ("00003", False)]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    save(root / "a.jpg", 400)
    (root / "a.txt").write_text("caption a\n")
    save(root / "sub" / "b.png", 401, fmt="PNG")
    (root / "sub" / "b.txt").write_text("caption b")
    save(root / "c.jpg", 402)  # no caption file
    return root


def test_folder_pairs_same_stem_txt(folder):
    assert listing(f"folder:{folder}") == [("a", "caption a\n", None), ("c", None, None), ("sub/b", "caption b", None)]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_table_columns_named_by_flags(tmp_path, fmt):
    for i in range(2):
        save(tmp_path / "pics" / f"p{i}.jpg", 500 + i)
    rows = [{"path": "pics/p0.jpg", "text": "table zero", "score": 1.5}, {"path": "pics/p1.jpg", "text": "table one", "score": 2.5}]
    path = tmp_path / f"t.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        path.write_text("path,text,score\n" + "".join(f"{r['path']},{r['text']},{r['score']}\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    spec = parse_spec(f"table:{path}", {"image": "path", "caption": "text"})
    recs = list(open_source(spec).records)
    assert [(r.key, r.caption) for r in recs] == [("0-p0", "table zero"), ("1-p1", "table one")]
    assert str(recs[1].meta["score"]) == "2.5" and recs[1].image.path == str(tmp_path / "pics/p1.jpg")
    with pytest.raises(SnapdistillError, match="no column 'image'"):
        open_source(parse_spec(f"table:{path}"))


def test_mix_counts_and_weights_are_deterministic():
    from snapdistill.data.sources import SourceSpec
    from snapdistill.data.sources.base import Record

    def stream(name, n):
        return (Record(name, str(i), "c", None) for i in range(n))

    specs = [SourceSpec("a", "a", weight=3.0), SourceSpec("b", "b", weight=1.0), SourceSpec("c", "c", count=5),
             SourceSpec("d", "d")]
    sizes = (300, 1000, 50, 20)
    got = list(mix([(s, stream(s.kind, n)) for s, n in zip(specs, sizes)], seed=0))
    again = list(mix([(s, stream(s.kind, n)) for s, n in zip(specs, sizes)], seed=0))
    assert [(i, r.key) for i, r in got] == [(i, r.key) for i, r in again]
    per = {k: sum(1 for i, _ in got if i == k) for k in range(4)}
    # a runs out first (all 300 used), b stops with it at about a third of that, c gives exactly 5, d all.
    assert per[0] == 300 and 70 < per[1] < 130 and per[2] == 5 and per[3] == 20
    assert [r.key for i, r in got if i == 2] == ["0", "1", "2", "3", "4"]


def test_toy_source(tmp_path):
    pytest.importorskip("snapdistill.toy.world")
    recs = list(open_source(parse_spec("toy:3,split=val")).records)
    assert [r.key for r in recs] == ["val-0-0000000", "val-0-0000001", "val-0-0000002"]
    assert all(r.caption and r.image.load().size == (32, 32) for r in recs)
    assert set(recs[0].meta["attributes"]) == {"color", "shape", "position", "background"}


def test_all_sources_round_trip_through_webdataset(tmp_path, coco, img2dataset, diffusiondb, hpdv2, folder):
    import webdataset as wds

    specs = [f"coco:{coco}", f"laion-art:{img2dataset}", f"diffusiondb:{diffusiondb}", f"hpsv2:{hpdv2}",
             f"folder:{folder}"]
    config = build.BuildConfig(sources=[parse_spec(s) for s in specs], out=tmp_path / "out", resolution=32,
                               shard_size=4, progress=False, filters=build.FilterConfig(max_nsfw=0.5))
    manifest = json.loads(build.run(config).read_text())
    samples = list(wds.WebDataset(str(tmp_path / "out" / "shard-{000000..000002}.tar"), shardshuffle=False).decode("pil"))
    expected = {"one first", "two first", "laion caption 0", "a castle, artstation", "a cat", "first prompt",
                "second prompt", "caption a", "caption b"}
    assert {s["txt"] for s in samples} == expected and len(samples) == len(expected)
    assert all(s["jpg"].size == (32, 32) and s["jpg"].mode == "RGB" for s in samples)
    laion = next(s["json"] for s in samples if s["json"]["source"] == "laion-art")
    assert laion["pwatermark"] == 0.2 and laion["meta"]["aesthetic"] == 6.5 and laion["original_width"] == 48
    assert manifest["counts"]["rejected"] == {"missing_file": 1, "download_failed": 1, "nsfw": 1, "no_caption": 1}
    assert manifest["counts"]["per_source"][f"0:coco:{coco}"] == {"seen": 3, "written": 2, "rejected": 1}
    assert manifest["config"]["sources_info"][f"1:laion-art:{img2dataset}"]["img2dataset_stats"]["successes"] == 2


def test_coco_every_caption_survives_dedup_but_a_copied_image_does_not(tmp_path, cli):
    root = tmp_path / "coco"
    for i in range(10):
        save(root / "train2017" / f"{i:012d}.jpg", i)
    (root / "train2017" / "copy.jpg").write_bytes((root / "train2017" / f"{3:012d}.jpg").read_bytes())
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(10)] + [{"id": 99, "file_name": "copy.jpg"}]
    anns = [{"image_id": i, "id": 100 * i + c, "caption": f"image {i} caption {c}"} for i in [*range(10), 99]
            for c in range(5)]
    path = root / "annotations" / "captions_train2017.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    for resume in (False, True):
        if resume:  # a rerun restores the counts and the duplicate filter from the finished shards
            (tmp_path / "out" / "manifest.json").unlink()
        code, _, err = cli("build-data", "--source", f"coco:{path},captions=all", "--resolution", "32",
                           "--shard-size", "8", "--out", tmp_path / "out", "--no-progress")
        assert code == 0, err
        counts = json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]
        assert counts["written"] == 50 and counts["rejected"] == {"duplicate_image": 5}, counts
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rejects] == [f"99_{9900 + c}" for c in range(5)]


def test_two_sources_of_one_path_with_other_options_count_apart(tmp_path, coco, cli):
    code, _, err = cli("build-data", "--source", f"coco:{coco}", "--source", f"coco:{coco},captions=all",
                       "--resolution", "32", "--no-dedup", "--out", tmp_path / "out", "--no-progress")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    first, every = f"0:coco:{coco}", f"1:coco:{coco},captions=all"
    assert manifest["counts"]["per_source"] == {first: {"seen": 3, "written": 2, "rejected": 1},
                                                every: {"seen": 4, "written": 3, "rejected": 1}}
    assert manifest["config"]["sources_info"][first]["captions"] == "first"
    assert manifest["config"]["sources_info"][every]["captions"] == "all"
    assert {e["source"] for e in manifest["inputs"]} == {first, every}
