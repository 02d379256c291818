"""The stage contract's files: a damaged manifest is one line, and written files get the umask's mode."""


import pytest

from snapdistill.manifest import MANIFEST


@pytest.mark.parametrize("body, why", [
    (b"\xff\xfe{\x00}\x00", "not UTF-8"),
    (b'{"stage": "build-data",', "invalid JSON"),
    (b'["build-data"]', "a JSON array, not an object"),
    (b'"build-data"', "a JSON string, not an object"),
])
def test_a_damaged_manifest_is_one_line_naming_it(tmp_path, cli, body, why):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / MANIFEST).write_bytes(body)
    code, _, err = cli("recaption", "--in", folder, "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{folder / MANIFEST}: not a valid manifest (" in err and why in err, err
    assert err.rstrip().endswith("rerun the stage that wrote it"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_atomic_writes_get_the_umask_mode_like_the_shards(tmp_path, cli, umask):
    import os
    import stat

    from snapdistill.manifest import atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}\n")
        code, _, err = cli("build-data", "--source", "toy:3", "--resolution", "32", "--out", tmp_path / "out",
                           "--no-progress")
    finally:
        os.umask(old)
    assert code == 0, err
    want = 0o666 & ~umask
    out = tmp_path / "out"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "a.json", *out.iterdir()] if p.is_file()}
    assert modes == dict.fromkeys(modes, want), modes
    assert {"a.json", "manifest.json", "run.json", "progress.jsonl", "shard-000000.tar"} <= set(modes)
