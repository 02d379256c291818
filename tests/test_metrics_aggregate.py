import numpy as np
import pytest

from snapdistill.errors import SnapdistillError
from snapdistill.metrics import read_rows
from snapdistill.metrics.aggregate import chunk_means, chunked_mean_std, mean_summary, style_summary


def _benchmark_scores(rng):
    """800 scores whose 10 chunks of 80 have means 20, 21, ..., 29 and large spread within each chunk."""
    chunks = []
    for k in range(10):
        noise = rng.normal(0, 5, 80)
        chunks.append(20 + k + noise - noise.mean())
    return np.concatenate(chunks)


def test_chunk_rule_is_mean_and_std_of_chunk_means():
    scores = _benchmark_scores(np.random.default_rng(0))
    np.testing.assert_allclose(chunk_means(scores), np.arange(20, 30), atol=1e-9)
    mean, std = chunked_mean_std(scores)
    assert mean == pytest.approx(24.5)
    # Population std of 20..29 (HPSv2 uses np.std), far from the std of the 800 scores themselves (~5).
    assert std == pytest.approx(np.sqrt(8.25))
    assert abs(std - scores.std()) > 2


def test_chunks_follow_prompt_order():
    ordered = np.repeat(np.arange(10.0), 80)
    assert chunked_mean_std(ordered)[1] == pytest.approx(np.sqrt(8.25))
    # The same scores interleaved put every value in every chunk: no spread between chunks.
    interleaved = np.tile(np.arange(10.0), 80)
    assert chunked_mean_std(interleaved) == pytest.approx((4.5, 0.0))


def test_fewer_scores_than_chunks_gives_one_chunk_each():
    assert chunk_means([1.0, 3.0, 8.0]).tolist() == [1.0, 3.0, 8.0]
    assert chunked_mean_std([1.0, 3.0, 8.0]) == pytest.approx((4.0, np.std([1, 3, 8])))


def test_style_summary_averages_style_means():
    s = style_summary({"anime": [1.0] * 20, "photo": np.repeat([2.0, 4.0], 10)})
    assert s["styles"]["anime"] == {"mean": 1.0, "std": 0.0, "n": 20}
    assert s["styles"]["photo"]["mean"] == pytest.approx(3.0) and s["styles"]["photo"]["std"] == pytest.approx(1.0)
    assert s["average"] == pytest.approx(2.0) and s["n"] == 40
    assert mean_summary([1.0, 2.0, 6.0]) == {"mean": 3.0, "n": 3}


def test_a_broken_prompts_jsonl_names_its_line(tmp_path):
    (tmp_path / "prompts.jsonl").write_text('{"index": 0, "prompt": "a", "seed": 0, "file": "x.png"}\nnot json\n')
    with pytest.raises(SnapdistillError, match=r"prompts.jsonl:2: invalid JSON"):
        read_rows(tmp_path)
