"""The shipped toy judge: accuracy on real val images, its metrics and the toy FID formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from snapdistill.errors import SnapdistillError
from snapdistill.toy.judge import features as judge_features
from snapdistill.toy.judge import frechet_distance, judge_images, toy_fid, toy_tensors
from snapdistill.toy.paths import load_judge


@pytest.fixture(scope="module")
def judge():
    torch.set_num_threads(1)
    return load_judge()


@pytest.fixture(scope="module")
def val():
    return toy_tensors("val", 256, seed=11)


def test_judge_reads_real_val_images(judge, val):
    x, caps = val
    scores = judge_images(judge, x, caps)
    assert scores["exact"] >= 0.98
    assert set(scores["per_attribute"]) == {"color", "shape", "position", "background"}
    assert scores["acc"] >= scores["exact"]


def test_judge_accepts_pil_images_and_catches_wrong_captions(judge, val):
    from snapdistill.toy.world import toy_pairs

    pairs = list(toy_pairs("val", 32, seed=11))
    images, caps = [p[0] for p in pairs], [p[1] for p in pairs]
    assert judge_images(judge, images, caps)["exact"] == judge_images(judge, val[0][:32], caps)["exact"]
    swapped = [c.replace("left", "right") if "left" in c else c.replace("right", "left") for c in caps]
    wrong = judge_images(judge, images, swapped)
    moved = sum(("left" in c) or ("right" in c) for c in caps) / len(caps)
    assert wrong["per_attribute"]["position"] <= 1 - moved + 0.05
    assert wrong["per_attribute"]["color"] >= 0.95


def test_toy_fid_separates_real_from_degraded(judge, val):
    x, _ = toy_tensors("val", 1024, seed=12)  # FID needs many more samples than feature dims
    f_a, f_b = judge_features(judge, x[:512]), judge_features(judge, x[512:])
    blurred = F.avg_pool2d(x[512:], 4).repeat_interleave(4, 2).repeat_interleave(4, 3)  # shapes lost
    assert f_a.shape == (512, 128)
    assert 0 < toy_fid(f_a, f_b) < 0.5 * toy_fid(f_a, judge_features(judge, blurred))


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + np.eye(5)
    mu = rng.normal(size=5)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)
    # Isotropic Gaussians: |Δμ|² + d·(σa − σb)².
    got = frechet_distance(np.zeros(5), 4 * np.eye(5), np.ones(5), 9 * np.eye(5))
    assert got == pytest.approx(5 + 5 * (2 - 3) ** 2)


def test_missing_or_corrupted_judge_says_how_to_rebuild(tmp_path):
    import shutil

    from snapdistill.toy.paths import WEIGHTS_DIR

    folder = tmp_path / "judge"
    shutil.copytree(WEIGHTS_DIR / "judge", folder)
    weights = folder / "judge.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(
        SnapdistillError, match=r"missing or corrupted toy weights; rebuild with `snapdistill toy judge`"
    ):
        load_judge(root=folder)
    weights.unlink()
    with pytest.raises(SnapdistillError, match="judge.safetensors: missing or corrupted"):
        load_judge(root=folder)
