"""A full disk, a file-size limit or a read-only folder ends in one line and exit 2, with nothing half-written.

The end-to-end cases run the real command in a child process under RLIMIT_FSIZE: every write past the limit
fails in the kernel (EFBIG), in Python's own files, in torch's and safetensors' writers alike, as a full disk
would, without needing one.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from snapdistill.errors import storage_message

LIMITED = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv = ["snapdistill", *sys.argv[2:]]
    from snapdistill.cli import main
    main()
""")


def _run_limited(limit: int, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("SNAPDISTILL_DEBUG", None)
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _assert_one_line(res: subprocess.CompletedProcess, out: Path) -> None:
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "file size limit reached" in errors[0] and str(out.name) in errors[0]
    assert "free some space there or choose another --out" in errors[0]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written is left


def test_build_data_past_the_file_size_limit_is_one_line_and_a_rerun_finishes(tmp_path):
    args = ["build-data", "--source", "toy:96", "--resolution", "32", "--shard-size", "32", "--prefix", "toy"]
    res = _run_limited(20_000, *args, "--out", tmp_path / "b", cwd=tmp_path)
    _assert_one_line(res, tmp_path / "b")
    again = _run_limited(2**30, *args, "--out", tmp_path / "b", cwd=tmp_path)
    clean = _run_limited(2**30, *args, "--out", tmp_path / "clean", cwd=tmp_path)
    assert again.returncode == 0 and clean.returncode == 0, again.stderr[-2000:] + clean.stderr[-2000:]
    for name in ("toy-000000.tar", "toy-000001.tar", "toy-000002.tar"):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


def test_sample_past_the_file_size_limit_is_one_line(tmp_path, tiny_eps_dir):
    res = _run_limited(1_500, "sample", "--teacher", tiny_eps_dir, "--prompt", "a red square", "--steps", "2",
                       "--out", tmp_path / "s", cwd=tmp_path)
    _assert_one_line(res, tmp_path / "s")
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_a_checkpoint_past_the_file_size_limit_is_one_line_and_leaves_no_partial_checkpoint(tmp_path, tiny_eps_dir,
                                                                                           test_shards):
    res = _run_limited(200_000, "distill-guidance", "--teacher", tiny_eps_dir, "--shards", test_shards,
                       "--max-steps", "1", "--batch-size", "2", "--out", tmp_path / "g", cwd=tmp_path)
    _assert_one_line(res, tmp_path / "g")
    assert list((tmp_path / "g" / "checkpoints").iterdir()) == []  # the temporary checkpoint folder is gone
    assert not (tmp_path / "g" / "student").exists()


def test_a_checkpoint_the_disk_cannot_hold_is_refused_before_writing(cli, tmp_path, tiny_eps_dir, test_shards,
                                                                    monkeypatch):
    from collections import namedtuple

    import snapdistill.distill.loop as loop

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(loop.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    code, _, err = cli("distill-guidance", "--teacher", tiny_eps_dir, "--shards", test_shards, "--max-steps", "1",
                       "--batch-size", "2", "--out", tmp_path / "g")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "a checkpoint needs about" in err and "0.0 MB free" in err and str(tmp_path / "g") in err
    assert list((tmp_path / "g" / "checkpoints").iterdir()) == []


@pytest.mark.parametrize(("exc", "expected"), [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/x.tar.tmp"),
     "/data/out/x.tar.tmp: no space left on the device"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/out"), "/ro/out: cannot write (read-only file system)"),
    (OSError(errno.EACCES, "Permission denied"), "OUT: cannot write (permission denied)"),
    (RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 832 vs 726"),
     "OUT: a file write failed (the disk is probably full"),
    (Exception("Error while serializing: I/O error: No space left on device (os error 28)"),
     "OUT: no space left on the device"),
])
def test_failed_writes_read_as_one_line(exc, expected, tmp_path):
    message = storage_message(exc, tmp_path / "OUT")
    assert message is not None and "\n" not in message
    assert message.replace(str(tmp_path / "OUT"), "OUT").startswith(expected)


def test_other_errors_are_not_taken_for_failed_writes(tmp_path):
    assert storage_message(OSError(errno.ENOENT, "No such file", "x"), tmp_path) is None
    assert storage_message(RuntimeError("shape mismatch"), tmp_path) is None
    assert storage_message(ValueError("os error 28 somewhere else"), tmp_path) is None


def test_a_read_only_folder_met_mid_stage_is_one_line(cli, monkeypatch):
    import snapdistill.cli as cli_module

    def app():
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run/rejects.jsonl")

    monkeypatch.setattr(cli_module, "app", app)
    code, _, err = cli("recaption")
    assert code == 2
    assert err.strip() == "error: /mnt/ro/run/rejects.jsonl: cannot write (read-only file system); choose a writable --out"


def test_checkpoint_size_counts_weights_moments_ema_and_the_extra_module():
    from snapdistill.distill.loop import checkpoint_bytes

    model, extra = torch.nn.Linear(10, 10), torch.nn.Linear(10, 5)  # 110 and 55 fp32 parameters
    assert checkpoint_bytes(model, ema=False) == 110 * 4 * 3
    assert checkpoint_bytes(model, ema=True, extra_module=extra) == 110 * 4 * 4 + 55 * 4
