import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from snapdistill.errors import SnapdistillError
from snapdistill.metrics.toy import image_mse, judge_per_image, pair_with_reference, toy_summary


def _toy_val(n, seed=0, start=0):
    from snapdistill.toy.world import toy_pairs

    pairs = list(toy_pairs("val", n, seed=seed, start=start))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_per_image_pieces_add_up_to_the_judges_own_numbers():
    from snapdistill.toy.judge import ToyJudge, features, judge_images, toy_fid

    torch.manual_seed(0)
    judge = ToyJudge().eval()  # random weights: about chance level, which is fine for agreement
    images, captions = _toy_val(24)
    per_image = judge_per_image(judge, images[:10], captions[:10]) + judge_per_image(judge, images[10:], captions[10:])
    real = features(judge, _toy_val(40, seed=1)[0]).numpy()
    got = toy_summary(per_image, real)
    ref = judge_images(judge, images, captions)
    assert got["acc"] == pytest.approx(ref["acc"]) and got["exact"] == pytest.approx(ref["exact"])
    assert got["per_attribute"] == pytest.approx(ref["per_attribute"])
    assert got["fid"] == pytest.approx(toy_fid(features(judge, images), real), rel=1e-9)
    assert (got["n"], got["n_real"]) == (24, 40)
    same = toy_summary(per_image, np.stack([r["features"] for r in per_image]))
    assert abs(same["fid"]) < 1e-6


def test_non_toy_captions_are_refused():
    from snapdistill.toy.judge import ToyJudge

    with pytest.raises(SnapdistillError, match="toy captions"):
        judge_per_image(ToyJudge().eval(), [Image.new("RGB", (32, 32))], ["a photo of a cat"])


def test_shipped_judge_reads_real_images_and_toy_fid_ranks_blur():
    paths = pytest.importorskip("snapdistill.toy.paths")
    from snapdistill.metrics.toy import load_toy_judge, real_toy_features

    try:
        judge = load_toy_judge()
    except SnapdistillError as e:
        pytest.skip(f"toy judge weights not available: {e}")
    assert paths.toy_judge_dir().is_dir()
    real = real_toy_features(judge, n=256)
    images, captions = _toy_val(128, seed=7, start=1000)
    sharp = toy_summary(judge_per_image(judge, images, captions), real)
    blurred = toy_summary(judge_per_image(judge, [im.filter(ImageFilter.GaussianBlur(2)) for im in images], captions), real)
    assert sharp["acc"] > 0.95 and sharp["exact"] > 0.85
    assert blurred["fid"] > 1.5 * sharp["fid"]  # 128 images in 128-d features: both carry a large small-sample bias


def test_mse_against_a_same_noise_reference(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (4, 4), (0, 0, 0)).save(a)
    Image.new("RGB", (4, 4), (51, 102, 0)).save(b)  # 0.2, 0.4, 0 in [0, 1]
    np.testing.assert_allclose(image_mse([a, a], [b, a]), [(0.04 + 0.16) / 3, 0.0])
    rows = [{"index": 0, "seed": 5, "style": None, "prompt": "x"}]
    assert pair_with_reference(rows, [{"index": 0, "seed": 5, "prompt": "x", "file": "f"}], run=a, ref=b)[0]["file"] == "f"
    with pytest.raises(SnapdistillError, match="same prompts and --seed"):
        pair_with_reference(rows, [{"index": 0, "seed": 6, "prompt": "x"}], run=a, ref=b)
