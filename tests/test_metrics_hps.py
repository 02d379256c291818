
import numpy as np
import pytest
import torch
from PIL import Image

from snapdistill.errors import SnapdistillError
from snapdistill.metrics import hps

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def tiny_arch(tiny_open_clip):
    """A tiny random open_clip config registered by name, so the ViT-H-14 code path runs on it."""
    return tiny_open_clip("snapdistill-tiny-hps")[0].stem


@pytest.fixture(scope="module")
def tiny_scorer(tiny_arch):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_arch, pretrained=None)
    return hps.HPSScorer.from_model(model, open_clip.get_tokenizer(tiny_arch), "v2.1")


def _normed(rgb):
    return (np.array(rgb) / 255.0 - MEAN) / STD


def test_preprocess_wide_image_matches_hand_computation():
    # 300x100, left half red, right half green: longest side 300 -> 224, height round(74.67) = 75,
    # 149 rows of zero padding split 74 above, 75 below.
    px = np.zeros((100, 300, 3), np.uint8)
    px[:, :150] = (255, 0, 0)
    px[:, 150:] = (0, 255, 0)
    x = hps.hps_preprocess(Image.fromarray(px)).numpy()
    assert x.shape == (3, 224, 224)
    pad = _normed((0, 0, 0))
    for row in (0, 73, 149, 223):
        np.testing.assert_allclose(x[:, row, :], np.broadcast_to(pad[:, None], (3, 224)), atol=1e-5)
    for row in (74, 110, 148):
        np.testing.assert_allclose(x[:, row, 10], _normed((255, 0, 0)), atol=1e-4)
        np.testing.assert_allclose(x[:, row, 200], _normed((0, 255, 0)), atol=1e-4)


def test_preprocess_tall_image_pads_left_and_right():
    # 100 wide x 300 tall: width 75, 74 columns of padding on the left, 75 on the right.
    px = np.full((300, 100, 3), 255, np.uint8)
    px[:150] = (0, 0, 255)
    x = hps.hps_preprocess(Image.fromarray(px)).numpy()
    pad = _normed((0, 0, 0))
    for col in (0, 73, 149, 223):
        np.testing.assert_allclose(x[:, :, col], np.broadcast_to(pad[:, None], (3, 224)), atol=1e-5)
    np.testing.assert_allclose(x[:, 10, 74], _normed((0, 0, 255)), atol=1e-4)
    np.testing.assert_allclose(x[:, 210, 148], _normed((255, 255, 255)), atol=1e-4)


def test_preprocess_square_224_is_only_normalised():
    px = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    x = hps.hps_preprocess(Image.fromarray(px)).numpy()
    np.testing.assert_allclose(x, ((px / 255.0 - MEAN) / STD).transpose(2, 0, 1), atol=1e-5)


def test_vit_h14_tokenizer_works_offline():
    import open_clip

    ids = open_clip.get_tokenizer(hps.HPS_ARCH)(["red"])[0]
    assert ids[:3].tolist() == [49406, 736, 49407] and ids.shape == (77,)


def test_score_is_100_cos_of_each_pair(tiny_scorer):
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(3)]
    prompts = ["a red circle", "a blue square at the top", "a cat"]
    scores = tiny_scorer.score(images, prompts, batch_size=2)
    with torch.no_grad():
        img = tiny_scorer.model.encode_image(torch.stack([hps.hps_preprocess(im) for im in images]))
        txt = tiny_scorer.model.encode_text(tiny_scorer.tokenizer(prompts))
    expected = 100 * torch.nn.functional.cosine_similarity(img, txt).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    # Pairs, not all-vs-all: swapping two prompts swaps exactly those scores.
    swapped = tiny_scorer.score(images, [prompts[1], prompts[0], prompts[2]])
    assert abs(swapped[0] - scores[0]) > 1e-3
    assert swapped[2] == pytest.approx(scores[2], abs=1e-5)


def test_checkpoint_with_module_prefix_loads_and_scores_the_same(tmp_path, tiny_arch, tiny_scorer):
    state = {f"module.{k}": v for k, v in tiny_scorer.model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "hps.pt")
    loaded = hps.load_hps_scorer(tmp_path / "hps.pt", "v2.1", arch=tiny_arch)
    im = [Image.new("RGB", (40, 30), (200, 30, 30))]
    np.testing.assert_allclose(loaded.score(im, ["a red square"]), tiny_scorer.score(im, ["a red square"]), atol=1e-5)
    assert loaded.version == "v2.1"


def test_vit_h14_key_mismatch_says_how_many_matched(tmp_path):
    shapes = hps.arch_shapes()
    assert len(shapes) > 600 and shapes["visual.conv1.weight"] == (1280, 3, 14, 14)
    small = [k for k, s in shapes.items() if int(np.prod(s)) <= 1280][:10]
    state = {f"module.{k}": torch.zeros(shapes[k]) for k in small}
    state["module.visual.proj"] = torch.zeros(3, 3)  # right name, wrong shape: not a match
    torch.save({"state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(SnapdistillError, match=f"10 of {len(shapes)} ViT-H-14 keys match"):
        hps.load_hps_scorer(tmp_path / "bad.pt", "v2.0")


def test_versions_are_explicit_and_read_from_official_names(tmp_path):
    with pytest.raises(SnapdistillError, match="v2.0, v2.1"):
        hps.check_version("2.1")
    assert hps.version_in_filename(tmp_path / "HPS_v2.1_compressed.pt") == "v2.1"
    assert hps.version_in_filename(tmp_path / "HPS_v2_compressed.pt") == "v2.0"
    assert hps.version_in_filename(tmp_path / "my_reward.pt") is None


def test_summary_per_style_in_prompt_order():
    rows = [{"index": i, "style": s} for s in ("photo", "anime") for i in (1, 0)]
    s = hps.hps_summary(rows, np.array([10.0, 20.0, 30.0, 50.0]), "v2.1")
    assert s["version"] == "v2.1" and s["n"] == 4
    assert s["styles"]["photo"]["mean"] == pytest.approx(15.0) and s["styles"]["photo"]["std"] == pytest.approx(5.0)
    assert s["average"] == pytest.approx((15.0 + 40.0) / 2) and s["full_benchmark"] is False
    plain = hps.hps_summary([{"index": 0, "style": None}, {"index": 1, "style": None}], np.array([1.0, 3.0]), "v2.0")
    assert (plain["average"], plain["styles"]) == (2.0, {})
