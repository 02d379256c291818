"""Every sample accounted for: shards are read from their manifest's list and checked against it, losses are named
or recorded, and `verify` checks any stage folder against the files its manifest lists."""

import hashlib
import json
import shutil

import pytest
from shardkit import relist

from snapdistill.manifest import MANIFEST

PER_SHARD = 16


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """build-data toy:40 at 32 px in shards of 16 (16, 16, 8 samples), then recaption --mode clean."""
    from snapdistill.data import build, recaption
    from snapdistill.data.sources import parse_spec

    root = tmp_path_factory.mktemp("acc")
    build.run(build.BuildConfig(sources=[parse_spec("toy:40")], out=root / "shards", resolution=32,
                                shard_size=PER_SHARD, progress=False))
    recaption.run(recaption.RecaptionConfig(input=root / "shards", out=root / "clean"))
    return root


def _manifest(folder):
    return json.loads((folder / MANIFEST).read_text())


def _copy(built, tmp_path, name="shards"):
    return shutil.copytree(built / name, tmp_path / name)


@pytest.mark.parametrize("name", ["shards", "clean"])
def test_each_shard_is_listed_with_its_samples_size_and_the_sha256_of_its_bytes(built, name):
    m = _manifest(built / name)
    names = m["outputs"]["shards"]
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [m["files"][n]["samples"] for n in names] == [16, 16, 8]
    for n in names:
        data = (built / name / n).read_bytes()
        assert m["files"][n]["bytes"] == len(data)
        assert m["files"][n]["sha256"] == hashlib.sha256(data).hexdigest()  # hashed while written, and right
    assert "rejects.jsonl" in m["files"] and MANIFEST not in m["files"]


def test_a_resumed_build_keeps_the_hashes_of_the_shards_it_kept(built, tmp_path):
    from snapdistill.data import build
    from snapdistill.data.sources import parse_spec

    src = _copy(built, tmp_path)
    (src / MANIFEST).unlink()
    (src / "shard-000002.tar").unlink()  # stopped after two shards
    lines = (src / "progress.jsonl").read_text().splitlines()[:2]
    (src / "progress.jsonl").write_text("".join(line + "\n" for line in lines))
    build.run(build.BuildConfig(sources=[parse_spec("toy:40")], out=src, resolution=32, shard_size=PER_SHARD,
                                progress=False))
    assert _manifest(src)["files"] == {k: v for k, v in _manifest(built / "shards")["files"].items()}


def _cut(path, at):
    data = path.read_bytes()
    path.write_bytes(data[:at])
    return len(data)


@pytest.mark.parametrize("extra", [0, 777])
def test_a_cut_shard_is_one_line_naming_it_and_the_samples_it_should_hold(built, tmp_path, cli, extra):
    src = _copy(built, tmp_path)
    whole = (src / "shard-000000.tar").stat().st_size
    _cut(src / "shard-000000.tar", (whole // 2) // 512 * 512 + extra)  # where an interrupted copy stops, and past it
    code, _, err = cli("recaption", "--in", src, "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{src / 'shard-000000.tar'}: " in err and f"the manifest says {whole}" in err
    assert "it should hold 16 samples" in err and "--allow-lost-samples" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_missing_shard_is_one_line_for_every_reading_stage_before_any_model_loads(built, tmp_path, cli,
                                                                                    tiny_eps_dir):
    src = _copy(built, tmp_path)
    (src / "shard-000001.tar").unlink()
    # A teacher whose weights do not load: a stage that loaded a model before checking the shards would say so.
    teacher = shutil.copytree(tiny_eps_dir, tmp_path / "teacher")
    for weights in teacher.rglob("*.safetensors"):
        weights.write_bytes(b"not weights")
    for args in (("recaption", "--in", src), ("cache-latents", "--teacher", teacher, "--shards", src),
                 ("distill-guidance", "--teacher", teacher, "--shards", src, "--max-steps", 1),
                 ("distill-steps", "--teacher", teacher, "--shards", src, "--from", 4, "--to", 2),
                 ("distill-decoder", "--teacher", teacher, "--shards", src)):
        out = tmp_path / f"out-{args[0]}"
        code, _, err = cli(*args, "--out", out)
        assert code == 2 and err.count("\n") == 1, (args[0], err)
        assert f"{src / 'shard-000001.tar'}: missing; it should hold 16 samples" in err, (args[0], err)
        assert not (out / MANIFEST).exists()


def test_allowed_losses_are_counted_recorded_and_carried_forward(built, tmp_path, cli, tiny_eps_dir):
    src = _copy(built, tmp_path)
    (src / "shard-000001.tar").unlink()
    _cut(src / "shard-000000.tar", 9 * 1024)  # part way into the shard
    code, _, err = cli("recaption", "--in", src, "--out", tmp_path / "clean", "--allow-lost-samples")
    assert code == 0, err
    assert "shard-000001.tar: missing" in err and "shard-000000.tar: " in err
    m = _manifest(tmp_path / "clean")
    lost = {e["shard"]: e for e in m["counts"]["lost"]}
    assert set(lost) == {"shard-000000.tar", "shard-000001.tar"}
    assert (lost["shard-000001.tar"]["expected"], lost["shard-000001.tar"]["read"]) == (16, 0)
    read = lost["shard-000000.tar"]["read"]
    assert lost["shard-000000.tar"]["expected"] == 16 and 0 < read < 16
    assert m["outputs"]["shards"] == ["shard-000000.tar", "shard-000002.tar"]
    assert m["files"]["shard-000000.tar"]["samples"] == read and m["counts"]["samples"] == read + 8
    # The next stage reads the recorded folder without complaint and carries the record forward.
    code, _, err = cli("distill-guidance", "--teacher", tiny_eps_dir, "--shards", tmp_path / "clean", "--max-steps", 1,
                       "--batch-size", 2, "--val-prompts", 0, "--out", tmp_path / "run")
    assert code == 0 and "warning" not in err, err
    assert _manifest(tmp_path / "run")["counts"]["lost"] == m["counts"]["lost"]


def test_a_tar_the_manifest_does_not_list_is_named_and_not_read(built, tmp_path, cli):
    src = _copy(built, tmp_path)
    shutil.copy(src / "shard-000000.tar", src / "shard-000007.tar")
    code, _, err = cli("recaption", "--in", src, "--out", tmp_path / "out")
    assert code == 0 and f"warning: {src / 'shard-000007.tar'}: not listed in" in err, err
    assert _manifest(tmp_path / "out")["outputs"]["shards"] == _manifest(src)["outputs"]["shards"]
    assert not (tmp_path / "out" / "shard-000007.tar").exists()


def test_a_folder_written_before_sizes_were_recorded_still_reads_with_one_line(built, tmp_path, cli):
    src = _copy(built, tmp_path)
    m = _manifest(src)
    del m["files"]
    (src / MANIFEST).write_text(json.dumps(m))
    code, _, err = cli("recaption", "--in", src, "--out", tmp_path / "out")
    assert code == 0 and err.count("\n") == 1 and "cannot" not in err.split(":")[0], err
    assert "written before manifests recorded shard sizes" in err
    assert _manifest(tmp_path / "out")["counts"]["samples"] == 40
    code, out, _ = cli("verify", src)
    assert code == 0 and "unchecked" in out


def test_training_counts_samples_lost_per_shard_not_exceptions(built, tmp_path, capsys):
    from snapdistill.data.shards import manifest_shards
    from snapdistill.distill.data import ShardPairs
    from snapdistill.errors import SnapdistillError

    src = _copy(built, tmp_path)
    _cut(src / "shard-000002.tar", 4 * 1024)  # 8 listed, about 2 left
    listed = manifest_shards(src, allow_lost=True)
    assert "shard-000002.tar" in capsys.readouterr().err
    got = list(ShardPairs(listed, size=32, seed=0, allow_lost=True)._epoch(0))
    err = capsys.readouterr().err
    lost = 40 - len(got)
    assert 0 < lost <= 8
    assert f"{lost} of 40 training samples lost in epoch 0 (shard-000002.tar: {8 - lost} of 8 read" in err, err
    # Without leave, a loss over a tenth stops training in one line.
    listed.expected["shard-000002.tar"] = 40
    with pytest.raises(SnapdistillError, match=r"training samples lost in epoch 0 .*more than 10%"):
        list(ShardPairs(listed, size=32, seed=0)._epoch(0))


def test_verify_exits_0_on_fresh_folders_and_1_naming_a_changed_byte(built, tmp_path, cli):
    code, out, err = cli("verify", built)  # the parent: every stage folder below it
    assert code == 0 and "2 folders match their manifests (sizes and sha256)" in out, out + err
    src = _copy(built, tmp_path, "clean")
    data = bytearray((src / "shard-000001.tar").read_bytes())
    data[len(data) // 2] ^= 0x01
    (src / "shard-000001.tar").write_bytes(bytes(data))
    code, out, err = cli("verify", src)
    assert code == 1 and f"{src / 'shard-000001.tar'}: sha256 differs" in err, out + err
    code, out, err = cli("verify", "--quick", src)  # sizes only: the same size passes
    assert code == 0, out + err
    _cut(src / "shard-000002.tar", 1024)
    (src / "stats" / "shard-000000.tar.json").unlink()
    code, out, err = cli("verify", "--quick", src)
    assert code == 1 and f"{src / 'shard-000002.tar'}: 1024 bytes, the manifest says" in err, err
    assert f"{src / 'stats' / 'shard-000000.tar.json'}: missing" in err


def test_verify_names_a_folder_without_a_manifest(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    code, _, err = cli("verify", tmp_path / "empty")
    assert code == 2 and err.count("\n") == 1 and "no manifest.json there or below" in err


def test_relist_helper_records_what_is_there(built, tmp_path):
    """The tests' own helper: a folder changed by hand and relisted reads as written that way."""
    src = _copy(built, tmp_path)
    shutil.copy(src / "shard-000000.tar", src / "shard-000009.tar")
    relist(src)
    m = _manifest(src)
    assert m["outputs"]["shards"][-1] == "shard-000009.tar" and m["files"]["shard-000000.tar"]["samples"] == 16


def test_training_on_a_cut_shard_when_allowed_records_it_and_counts_the_loss(built, tmp_path, cli, tiny_eps_dir):
    src = _copy(built, tmp_path)
    whole = _cut(src / "shard-000001.tar", 6 * 1024)
    code, _, err = cli("distill-guidance", "--teacher", tiny_eps_dir, "--shards", src, "--max-steps", 30,
                       "--batch-size", 2, "--val-prompts", 0, "--allow-lost-samples", "--out", tmp_path / "run")
    assert code == 0, err
    assert "shard-000001.tar: 6144 bytes, the manifest says" in err
    assert "training samples lost in epoch 0 (shard-000001.tar: " in err, err
    lost = _manifest(tmp_path / "run")["counts"]["lost"]
    assert lost == [{"stage": "distill", "folder": str(src.resolve()), "shard": "shard-000001.tar", "expected": 16,
                     "read": None, "reason": f"6144 bytes of {whole}"}]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """build-data toy:100 split over two array jobs (--shard-index 0 and 1 of --num-shards 2), shards of 16."""
    from snapdistill.data import build
    from snapdistill.data.sources import parse_spec

    root = tmp_path_factory.mktemp("jobs")
    for k in (0, 1):
        build.run(build.BuildConfig(sources=[parse_spec("toy:100")], out=root / f"job-{k}", resolution=32,
                                    shard_size=PER_SHARD, shard_index=k, num_shards=2, progress=False))
    return root


def test_array_jobs_merge_into_one_folder_that_reads_and_verifies_as_one_build(jobs, tmp_path, cli):
    from snapdistill.data.shards import manifest_shards

    code, out, err = cli("merge-shards", jobs / "job-0", jobs / "job-1", "--out", tmp_path / "all")
    assert code == 0, err
    m = _manifest(tmp_path / "all")
    parts = [_manifest(jobs / f"job-{k}") for k in (0, 1)]
    assert m["outputs"]["shards"] == sorted(parts[0]["outputs"]["shards"] + parts[1]["outputs"]["shards"])
    assert m["files"] == {**{k: v for p in parts for k, v in p["files"].items() if k.endswith(".tar")},
                               "rejects.jsonl": m["files"]["rejects.jsonl"]}
    assert m["counts"]["written"] == 100 == sum(p["counts"]["written"] for p in parts)
    assert (m["counts"]["per_job"], m["counts"]["missing_jobs"]) == ({"0": 50, "1": 50}, [])
    listed = manifest_shards(tmp_path / "all")
    assert sum(listed.expected.values()) == 100
    assert cli("verify", tmp_path / "all")[0] == 0
    code, out, _ = cli("verify", jobs)  # the jobs' folders side by side
    assert code == 0 and "2 folders match" in out


def test_merge_refuses_a_changed_shard_other_settings_and_a_repeated_job(jobs, tmp_path, cli):
    job0 = shutil.copytree(jobs / "job-0", tmp_path / "job-0")
    data = bytearray((job0 / "shard-000002.tar").read_bytes())
    data[len(data) // 3] ^= 0x04
    (job0 / "shard-000002.tar").write_bytes(bytes(data))
    code, _, err = cli("merge-shards", job0, jobs / "job-1", "--out", tmp_path / "all")
    assert code == 2 and err.count("\n") == 1 and f"{job0 / 'shard-000002.tar'}: sha256 differs" in err, err
    assert not list((tmp_path / "all").glob("*.tmp")) and not (tmp_path / "all" / MANIFEST).exists()
    code, _, err = cli("merge-shards", jobs / "job-0", jobs / "job-0", "--out", tmp_path / "b")
    assert code == 2 and "given twice" in err
    m = _manifest(job0)
    m["config"]["resolution"] = 64
    (job0 / MANIFEST).write_text(json.dumps(m))
    code, _, err = cli("merge-shards", jobs / "job-1", job0, "--out", tmp_path / "c")
    assert code == 2 and "built with other settings" in err and "resolution differ" in err, err
    code, _, err = cli("merge-shards", jobs / "job-1", "--out", tmp_path / "d")  # job 0 of 2 missing
    assert code == 0 and "warning: jobs 0 of --num-shards 2 are not given" in err, err
    assert _manifest(tmp_path / "d")["counts"]["missing_jobs"] == [0]


def test_verify_names_a_manifest_record_that_is_not_a_file_of_the_folder(built, tmp_path, cli):
    src = _copy(built, tmp_path)
    m = _manifest(src)
    m["files"]["../outside.txt"] = {"bytes": 1, "sha256": "0" * 64}
    m["files"]["rejects.jsonl"] = "not a record"
    (src / MANIFEST).write_text(json.dumps(m))
    code, _, err = cli("verify", src)
    assert code == 1 and "its record of '../outside.txt' is not a file of the folder" in err, err
    assert "its record of 'rejects.jsonl' is not a file of the folder" in err
