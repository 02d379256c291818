import copy

import numpy as np
import pytest
import torch
from PIL import Image

from snapdistill.errors import SnapdistillError
from snapdistill.metrics.clip_score import ClipScorer, load_clip_scorer


@pytest.fixture(scope="module")
def tiny(tiny_open_clip):
    """(config file, model, weights file) of a tiny random open_clip model."""
    config, model, _ = tiny_open_clip("snapdistill-tiny-clip", image_size=64, patch_size=16)
    torch.save(model.state_dict(), config.parent / "tiny.pt")
    return config, model, config.parent / "tiny.pt"


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def test_score_is_100_max_cos_0(tiny):
    import open_clip

    _, model, _ = tiny
    scorer = ClipScorer.from_model(copy.deepcopy(model), open_clip.get_tokenizer("snapdistill-tiny-clip"))
    # Fixed, unnormalised features: cosines 0.6, -1 and 0 -> scores 60, 0 (clamped), 0.
    scorer.model.encode_image = lambda x: torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 5.0]])
    scorer.model.encode_text = lambda t: torch.tensor([[3.0, 4.0], [-1.0, -1.0], [7.0, 0.0]])
    np.testing.assert_allclose(scorer.score(_images(3), ["a", "b", "c"]), [60.0, 0.0, 0.0], atol=1e-5)


def test_loaded_from_json_config_and_file_scores_like_the_model(tiny):
    import open_clip

    config, model, weights = tiny
    direct = ClipScorer.from_model(model, open_clip.get_tokenizer(config.stem))
    loaded = load_clip_scorer(str(config), weights)
    prompts = ["a red circle", "a green square", "a photo of a dog", "blue"]
    a = loaded.score(_images(4), prompts, batch_size=3)
    np.testing.assert_allclose(a, direct.score(_images(4), prompts), atol=1e-5)
    assert ((a >= 0) & (a <= 100)).all() and loaded.name == config.stem


def test_wrong_weights_are_refused(tiny, tmp_path):
    config, model, _ = tiny
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}, tmp_path / "half.pt")
    with pytest.raises(SnapdistillError, match="does not fit open_clip snapdistill-tiny-clip"):
        load_clip_scorer(str(config), tmp_path / "half.pt")
    with pytest.raises(SnapdistillError, match="not an open_clip architecture"):
        load_clip_scorer("ViT-Nope-1", tmp_path / "half.pt")
