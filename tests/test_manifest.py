"""The stage contract's files: a damaged manifest is one line, not a traceback."""


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
