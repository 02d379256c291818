import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from snapdistill.errors import SnapdistillError
from snapdistill.metrics import fid as fidmod
from snapdistill.metrics.fid import FidScorer, reference_files, reference_image, to_uint8_batch

D = 8  # feature dimension of the stand-in extractor
SIZE = 8


class PixelFeatures(nn.Module):
    """Stand-in for Inception: the first D values of the red channel's top row; counts its calls."""

    num_features = D

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1), requires_grad=False)  # weights to hash for the identity
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x[:, 0, 0, :D].double() * self.scale


def _pixels(n, seed=0, lo=60, hi=140):
    return np.random.default_rng(seed).integers(lo, hi + 1, (n, SIZE, SIZE, 3)).astype(np.uint8)


def _write(folder, pixels):
    folder.mkdir(parents=True, exist_ok=True)
    for i, px in enumerate(pixels):
        Image.fromarray(px).save(folder / f"{i:04d}.png")
    return reference_files(folder)


def _fid(reference, fake, cache):
    scorer = FidScorer.from_feature(PixelFeatures())
    scorer.set_reference(reference, SIZE, cache)
    return scorer.score([to_uint8_batch(fake[i : i + 16]) for i in range(0, len(fake), 16)], n_fake=len(fake))


def _feats(pixels):
    return pixels[:, 0, :D, 0].astype(np.float64)


def test_identical_sets_give_zero(tmp_path):
    a = _pixels(40)
    result = _fid(_write(tmp_path / "ref", a), a, tmp_path / "cache")
    assert abs(result["fid"]) < 1e-6 * np.trace(np.cov(_feats(a), rowvar=False))
    assert (result["n_fake"], result["n_real"]) == (40, 40)


def test_gaussians_shifted_by_c_give_c_squared(tmp_path):
    # Same covariance, means apart by 10 in each of D dimensions: FID = |Δμ|² = 100·D.
    a = _pixels(60, seed=1)
    result = _fid(_write(tmp_path / "ref", a), a + 10, tmp_path / "cache")
    assert result["fid"] == pytest.approx(100.0 * D, rel=1e-6)


def test_scaled_gaussian_matches_closed_form(tmp_path):
    # B = 2(A − 100) + 100: Σb = 4Σa, so tr(Σa + Σb − 2(ΣaΣb)^½) = tr(Σa) and FID = |μa − 100|² + tr(Σa).
    a = _pixels(60, seed=2)
    b = (2 * (a.astype(int) - 100) + 100).astype(np.uint8)
    f = _feats(a)
    expected = ((f.mean(0) - 100) ** 2).sum() + np.trace(np.cov(f, rowvar=False))
    result = _fid(_write(tmp_path / "ref", a), b, tmp_path / "cache")
    assert result["fid"] == pytest.approx(expected, rel=1e-5)


def test_reference_statistics_are_cached_by_content(tmp_path):
    ref = _write(tmp_path / "ref", _pixels(30, seed=3))
    fake = to_uint8_batch(_pixels(20, seed=4))
    first = FidScorer.from_feature(PixelFeatures())
    info = first.set_reference(ref, SIZE, tmp_path / "cache")
    assert info["cached"] is False and first.metric.inception.calls > 0
    value = first.score([fake], n_fake=20)["fid"]

    second = FidScorer.from_feature(PixelFeatures())
    info2 = second.set_reference(ref, SIZE, tmp_path / "cache")
    assert info2["cached"] is True and second.metric.inception.calls == 0
    assert second.score([fake], n_fake=20)["fid"] == pytest.approx(value, rel=1e-12)
    assert second.metric.inception.calls == 1  # only the generated batch went through the extractor

    # Another extractor (other weights) or changed reference files: a new key, computed afresh.
    other = PixelFeatures()
    other.scale.data.fill_(2.0)
    assert FidScorer.from_feature(other).set_reference(ref, SIZE, tmp_path / "cache")["cached"] is False
    Image.fromarray(_pixels(1, seed=9)[0]).save(ref[0])
    assert first.reference_key(ref, SIZE) != info["key"]
    assert FidScorer.from_feature(PixelFeatures()).set_reference(ref, SIZE, tmp_path / "cache")["cached"] is False


def test_small_samples_are_flagged_unreliable(tmp_path):
    a = _pixels(30, seed=5)
    result = _fid(_write(tmp_path / "ref", a), a, tmp_path / "cache")
    assert result["reliable"] is False and fidmod.FID_RELIABLE_MIN == 2000
    scorer = FidScorer.from_feature(PixelFeatures())
    scorer.set_reference(reference_files(tmp_path / "ref"), SIZE, tmp_path / "cache")
    assert scorer.score([to_uint8_batch(a)], n_fake=2000)["reliable"] is True


def test_reference_image_is_centre_cropped_then_resized(tmp_path):
    # 40x20: red | green | blue columns (10, 20, 10 px). The centre square is the green band alone, so the
    # 10x10 result is exactly green (build-data's square_resize: crop first, then area resize).
    px = np.zeros((20, 40, 3), np.uint8)
    px[:, :10] = (255, 0, 0)
    px[:, 10:30] = (0, 255, 0)
    px[:, 30:] = (0, 0, 255)
    Image.fromarray(px).save(tmp_path / "wide.png")
    out = reference_image(tmp_path / "wide.png", 10)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.broadcast_to(np.array([0, 255, 0], np.uint8), (10, 10, 3)))


def test_missing_or_tiny_reference_is_an_error(tmp_path):
    with pytest.raises(SnapdistillError, match="FID reference folder not found"):
        reference_files(tmp_path / "nope")
    (tmp_path / "one").mkdir()
    Image.fromarray(_pixels(1)[0]).save(tmp_path / "one" / "a.png")
    with pytest.raises(SnapdistillError, match="at least 2 reference images"):
        reference_files(tmp_path / "one")
    with pytest.raises(SnapdistillError, match="Inception weights not found"):
        FidScorer.inception(tmp_path / "missing.pth")


@pytest.mark.slow
def test_inception_weights_load_from_a_local_file(tmp_path, monkeypatch):
    """torch-fidelity's Inception built from a local weights file only (random weights, saved first)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, **k: None)
    monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {})
    torch.save(FeatureExtractorInceptionV3("x", ["2048"]).state_dict(), tmp_path / "inception.pth")
    monkeypatch.undo()

    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", no_network)
    scorer = FidScorer.inception(tmp_path / "inception.pth")
    assert scorer.identity.startswith("inception-v3-compat-2048:")
    a = _pixels(4, seed=6)
    scorer.set_reference(_write(tmp_path / "ref", a), SIZE, tmp_path / "cache", batch_size=2)
    assert abs(scorer.score([to_uint8_batch(a)], n_fake=4)["fid"]) < 1e-2
