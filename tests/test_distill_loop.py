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
        def dying(self, batch, gen):
            calls[0] += 1
            if calls[0] == int(kill_at):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, batch, gen)
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

    def loss_fn(batch, gen):
        return model.w.sum() * (float("nan") if batch >= 5 else 1.0) * torch.ones(2)

    def batches(skip):
        return iter(range(skip, 10_000))

    with pytest.raises(SnapdistillError, match=r"non-finite loss at step 5; .*step-0000004"):
        train(run_dir=tmp_path, student=model, loss_fn=loss_fn, batches=batches,
              config=TrainConfig(max_steps=10, batch_size=1, checkpoint_every=2, ema_decay=0))
    assert latest_checkpoint(tmp_path).name == "step-0000004"


def test_lr_warmup_then_cosine():
    assert [round(lr_factor(s, 4, 12), 4) for s in (0, 3, 4, 8, 12)] == [0.25, 1.0, 1.0, 0.5, 0.0]
