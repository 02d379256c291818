"""`accelerate launch --num_processes 2` on the CPU (gloo): both ranks train, the run checkpoints and resumes."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_two_cpu_processes_train_and_checkpoint(tmp_path, tiny_eps_dir, test_shards):
    out = tmp_path / "run"
    # On a machine without CUDA, snapdistill asks accelerate for a gloo group on the CPU.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "snapdistill"]
    args = ["distill-guidance", "--teacher", str(tiny_eps_dir), "--shards", str(test_shards), "--out", str(out),
            "--batch-size", "2", "--checkpoint-every", "2", "--cond-dim", "32", "--ema-decay", "0"]
    first = subprocess.run([*launcher, *args, "--max-steps", "4"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["steps"] == 4 and manifest["counts"]["processes"] == 2
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-0000002", "step-0000004"]
    # The main process wrote the one shared state: tensors and JSON, no per-rank pickles.
    assert sorted(p.name for p in (out / "checkpoints" / "step-0000004").iterdir()) == [
        "model.safetensors", "optimizer.pt", "trainer.json"]
    samples_per_s = [json.loads(line)["samples_per_s"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert len(samples_per_s) == 4 and all(v > 0 for v in samples_per_s)
    # Both ranks resume from it (each loads the main process's files) to the same student.
    student = out / "student" / "unet" / "diffusion_pytorch_model.safetensors"
    before = student.read_bytes()
    (out / "manifest.json").unlink()
    again = subprocess.run([*launcher, *args, "--max-steps", "4", "--resume", "latest"], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert student.read_bytes() == before
