"""The shared training loop: exact resume after SIGKILL, NaN handling, LR schedule."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from snapdistill.distill.loop import TrainConfig, latest_checkpoint, lr_factor, train
from snapdistill.errors import SnapdistillError

RUN = textwrap.dedent("""
    import os, signal, sys, torch
    from pathlib import Path
    torch.set_num_threads(1)
    from snapdistill.distill import guidance_stage, losses
    from snapdistill.distill.loop import TrainConfig
    from snapdistill.distill.stage import CommonConfig
    teacher, shards, out, kill_at, resume = sys.argv[1:6]
    if int(kill_at) > 0:
        calls = [0]
        original = losses.GuidanceLoss.__call__
        def dying(self, unet, batch, gen):
            calls[0] += 1
            if calls[0] == int(kill_at):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, unet, batch, gen)
        losses.GuidanceLoss.__call__ = dying
    train = TrainConfig(max_steps=12, batch_size=4, checkpoint_every=4, lr=1e-3, warmup_steps=2, ema_decay=0.9)
    common = CommonConfig(teacher=teacher, shards=Path(shards), out=Path(out), train=train, val_prompts=1,
                          resume=resume or None)
    guidance_stage.run(guidance_stage.GuidanceConfig(common=common, cond_dim=32))
""")


def _run(*args, check=True):
    return subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True, check=check)


def _unet_state(run: Path):
    from safetensors.torch import load_file

    return load_file(run / "student" / "unet" / "diffusion_pytorch_model.safetensors")


def test_resume_after_sigkill_gives_bitwise_the_same_weights(tmp_path, tiny_eps_dir, test_shards):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(tiny_eps_dir, test_shards, straight, 0, "")
    died = _run(tiny_eps_dir, test_shards, killed, 7, "", check=False)
    assert died.returncode == -9, died.stderr
    assert not (killed / "manifest.json").exists()
    assert latest_checkpoint(killed).name == "step-0000004"
    _run(tiny_eps_dir, test_shards, killed, 0, "latest")
    a, b = _unet_state(straight), _unet_state(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The weights moved away from the initial student (a test that could not fail otherwise).
    assert b["time_embedding.cond_proj.weight"].abs().max() > 0
    steps = [json.loads(line)["step"] for line in (killed / "stats.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    model = _Tiny()

    def loss_fn(module, batch, gen):
        return module.w.sum() * (float("nan") if batch >= 5 else 1.0) * torch.ones(2)

    def batches(skip):
        return iter(range(skip, 10_000))

    with pytest.raises(SnapdistillError, match=r"non-finite loss at step 5; .*step-0000004"):
        train(run_dir=tmp_path, student=model, loss_fn=loss_fn, batches=batches,
              config=TrainConfig(max_steps=10, batch_size=1, checkpoint_every=2, ema_decay=0))
    assert latest_checkpoint(tmp_path).name == "step-0000004"


def test_lr_warmup_then_cosine():
    assert [round(lr_factor(s, 4, 12), 4) for s in (0, 3, 4, 8, 12)] == [0.25, 1.0, 1.0, 0.5, 0.0]


def _tiny_train(run_dir, *, max_steps, resume=None, **kw):
    """Train `_Tiny` on a fixed loss; every step draws from its own generator, as the stages' losses do."""
    model = _Tiny()

    def loss_fn(module, batch, gen):
        return (module.w * torch.randn(3, generator=gen)).sum() ** 2 * torch.ones(2)

    config = TrainConfig(max_steps=max_steps, batch_size=1, warmup_steps=1, **kw)
    Path(run_dir).mkdir(exist_ok=True)
    train(run_dir=run_dir, student=model, loss_fn=loss_fn, batches=lambda skip: iter(range(skip, 10_000)),
          config=config, resume=resume)
    return model


def _stats_steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def test_checkpoints_hold_only_tensors_and_json_and_resume_exactly(tmp_path):
    from safetensors.torch import load_file

    straight = _tiny_train(tmp_path / "a", max_steps=6, checkpoint_every=2, ema_decay=0.9)
    _tiny_train(tmp_path / "b", max_steps=6, checkpoint_every=2, ema_decay=0.9)
    names = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert names == ["latest", "step-0000004", "step-0000006"]  # the two newest, complete
    step4 = tmp_path / "b" / "checkpoints" / "step-0000004"
    assert sorted(p.name for p in step4.iterdir()) == ["ema.pt", "files.json", "model.safetensors", "optimizer.pt",
                                                           "trainer.json"]
    assert set(load_file(step4 / "model.safetensors")) == {"w"}
    for name in ("optimizer.pt", "ema.pt"):
        torch.load(step4 / name, weights_only=True)  # tensors and plain values only
    resumed = _tiny_train(tmp_path / "b", max_steps=6, checkpoint_every=2, ema_decay=0.9, resume=step4)
    assert torch.equal(straight.w, resumed.w)
    assert _stats_steps(tmp_path / "b") == [1, 2, 3, 4, 5, 6]


def test_stats_log_has_one_row_per_step_after_a_fresh_start_and_a_resume(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "stats.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (1, 2, 3)))
    _tiny_train(run, max_steps=4, checkpoint_every=2, ema_decay=0)  # from nothing: the old rows go
    assert _stats_steps(run) == [1, 2, 3, 4]
    with open(run / "stats.jsonl", "a") as f:  # rows a stopped run logged after its last checkpoint
        f.write(json.dumps({"step": 5, "loss": 9.0}) + "\n")
    _tiny_train(run, max_steps=6, checkpoint_every=2, ema_decay=0, resume=run / "checkpoints" / "step-0000002")
    assert _stats_steps(run) == [1, 2, 3, 4, 5, 6]


class _Payload:
    """Unpickling this creates the file `path`: what a malicious checkpoint could do instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _guided_args(tiny_eps_dir, test_shards, out):
    return ("distill-guidance", "--teacher", tiny_eps_dir, "--shards", test_shards, "--out", out, "--max-steps", 2,
            "--batch-size", 2, "--checkpoint-every", 1, "--cond-dim", 32)


@pytest.mark.parametrize("plant, message", [
    ("custom_checkpoint_0.pkl", "not a snapdistill checkpoint (unexpected file custom_checkpoint_0.pkl); refusing"),
    ("optimizer.pt", "not a snapdistill checkpoint (optimizer.pt does not load as plain tensors: UnpicklingError)"),
])
def test_resume_refuses_a_checkpoint_with_a_pickle_and_runs_nothing(cli, tmp_path, tiny_eps_dir, test_shards, plant,
                                                                    message):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    assert cli(*_guided_args(tiny_eps_dir, test_shards, run))[0] == 0
    (run / "manifest.json").unlink()  # as if it had stopped after its last checkpoint
    torch.save(_Payload(tmp_path / "live"), tmp_path / "payload.pt")
    torch.load(tmp_path / "payload.pt", weights_only=False)  # the payload works when unpickled...
    assert (tmp_path / "live").exists()
    latest = latest_checkpoint(run)
    (latest / "files.json").unlink()  # as a checkpoint from before files.json: the loaders themselves must refuse
    torch.save(_Payload(marker), latest / plant)  # as accelerate wrote (and read back) its custom_checkpoint_*.pkl
    code, _, err = cli(*_guided_args(tiny_eps_dir, test_shards, run), "--resume", "latest")
    assert code == 2 and err.count("\n") == 1 and f"{latest}: {message}" in err, err
    assert not marker.exists()  # ...and resuming never unpickled it
    assert not (run / "manifest.json").exists()


def test_auto_lr_follows_the_student_size():
    """The default rate: the toy world's winner (3e-4) for small UNets, 1e-5 for SD-size ones (meta tensors: no memory)."""
    from snapdistill.distill.loop import auto_lr

    small = torch.nn.Linear(1000, 1000)
    big = torch.nn.Linear(20_000, 10_000, device="meta")
    assert (auto_lr(small), auto_lr(big)) == (3e-4, 1e-5)



@pytest.mark.parametrize("plant, content, message", [
    ("trainer.json", bytes(range(256)) * 4, "trainer.json: not a snapdistill checkpoint file (not UTF-8 text)"),
    ("trainer.json", b'{"step": 2', "trainer.json: not a snapdistill checkpoint file (Expecting"),
    ("trainer.json", b'{"step": "two", "consumed": 4}', "trainer.json: not a snapdistill checkpoint file (no whole"),
    ("latest", b"\xff\xfe\x00garbage", "latest: unreadable (UnicodeDecodeError)"),
])
def test_resume_from_a_checkpoint_file_that_does_not_parse_is_one_line(cli, tmp_path, tiny_eps_dir, test_shards,
                                                                      plant, content, message):
    run = tmp_path / "run"
    assert cli(*_guided_args(tiny_eps_dir, test_shards, run))[0] == 0
    (run / "manifest.json").unlink()  # as if it had stopped after its last checkpoint
    (latest_checkpoint(run) / "files.json").unlink()  # else its hashes would name the change first (tested below)
    target = latest_checkpoint(run) / plant if plant != "latest" else run / "checkpoints" / "latest"
    target.write_bytes(content)
    code, _, err = cli(*_guided_args(tiny_eps_dir, test_shards, run), "--resume", "latest")
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert "step-N" in err and "--overwrite" in err


def test_a_checkpoint_file_changed_after_it_was_written_is_refused_and_verify_names_it(cli, tmp_path, tiny_eps_dir,
                                                                                       test_shards):
    run = tmp_path / "run"
    assert cli(*_guided_args(tiny_eps_dir, test_shards, run))[0] == 0
    (run / "manifest.json").unlink()  # as if it had stopped after its last checkpoint
    latest = latest_checkpoint(run)
    recorded = json.loads((latest / "files.json").read_text())
    assert set(recorded) == {"model.safetensors", "optimizer.pt", "ema.pt", "trainer.json"}
    code, out, err = cli("verify", run)  # a run under way: its checkpoints against what they recorded
    assert code == 0 and "run (no manifest yet)" in out, out + err
    data = bytearray((latest / "optimizer.pt").read_bytes())
    data[-100] ^= 0x01  # one flipped bit, same size: torch.load might not even notice
    (latest / "optimizer.pt").write_bytes(bytes(data))
    code, _, err = cli(*_guided_args(tiny_eps_dir, test_shards, run), "--resume", "latest")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{latest / 'optimizer.pt'}: sha256 differs from the one recorded when the checkpoint was written" in err
    code, _, err = cli("verify", run)
    assert code == 1 and f"{latest / 'optimizer.pt'}: sha256 differs" in err, err


def test_a_run_manifest_lists_its_checkpoints_with_the_hashes_they_recorded(cli, tmp_path, tiny_eps_dir, test_shards):
    """The run's manifest takes the checkpoints' records from their files.json (not hashed twice): the same
    records, and those are the files' real sizes and sha256."""
    import hashlib

    run = tmp_path / "run"
    assert cli(*_guided_args(tiny_eps_dir, test_shards, run))[0] == 0
    files = json.loads((run / "manifest.json").read_text())["files"]
    checkpoint = latest_checkpoint(run)
    recorded = json.loads((checkpoint / "files.json").read_text())
    for name, record in recorded.items():
        rel = (checkpoint / name).relative_to(run).as_posix()
        data = (checkpoint / name).read_bytes()
        assert files[rel] == record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert "student/unet/config.json" in files and files[f"{checkpoint.relative_to(run).as_posix()}/files.json"]
