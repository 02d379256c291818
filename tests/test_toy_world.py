"""The toy world's data: captions, their parse, the fixed split, determinism and rendering."""

from __future__ import annotations

import re

import numpy as np
import pytest

from snapdistill.toy import world
from snapdistill.toy.world import (
    ATTRIBUTES,
    TOY_SIZE,
    parse_caption,
    render,
    split_captions,
    toy_pairs,
    toy_val_prompts,
)


def test_captions_are_well_formed_and_parse_back():
    for image, caption, attrs in toy_pairs("train", 64, seed=3):
        assert re.fullmatch(r"[a-z ,]+", caption), caption
        assert caption == caption.strip() and "  " not in caption
        assert parse_caption(caption) == attrs
        assert set(attrs) == set(ATTRIBUTES)
        assert all(attrs[k] in ATTRIBUTES[k] for k in ATTRIBUTES)
        assert image.size == (TOY_SIZE, TOY_SIZE) and image.mode == "RGB"


def test_every_combination_is_in_both_splits_and_captions_never_overlap():
    train, val = set(split_captions("train")), set(split_captions("val"))
    assert not train & val
    n_combos = len(world.all_attributes())
    assert n_combos == 5 * 3 * 5 * 3
    for caps in (train, val):
        combos = {tuple(sorted(parse_caption(c).items())) for c in caps}
        assert len(combos) == n_combos


def test_val_prompts_are_a_fixed_prefix():
    assert toy_val_prompts(1024)[:16] == toy_val_prompts(16)
    assert len(set(toy_val_prompts(1024))) == 1024
    assert all(world.caption_split(c) == "val" for c in toy_val_prompts(64))


def test_pairs_are_deterministic_and_splits_differ():
    a = [(np.asarray(im), c) for im, c, _ in toy_pairs("val", 4, seed=1)]
    b = [(np.asarray(im), c) for im, c, _ in toy_pairs("val", 4, seed=1)]
    assert all((x[0] == y[0]).all() and x[1] == y[1] for x, y in zip(a, b))
    # Item i does not depend on where the stream starts.
    later = next(toy_pairs("val", 1, seed=1, start=3))
    assert (np.asarray(later[0]) == a[3][0]).all()
    other = [c for _, c, _ in toy_pairs("val", 4, seed=2)]
    assert other != [c for _, c in a]


def test_render_draws_the_named_attributes():
    img = np.asarray(render({"color": "red", "shape": "square", "position": "left", "background": "black"}))
    assert tuple(img[0, -1]) == (15, 15, 15)  # background corner
    left, right = img[:, : TOY_SIZE // 2], img[:, TOY_SIZE // 2 :]
    red = (img[..., 0] > 150) & (img[..., 1] < 80)
    assert red[:, : TOY_SIZE // 2].sum() > 100 and red[:, TOY_SIZE // 2 + 4 :].sum() == 0
    assert left.mean() > right.mean()


@pytest.mark.parametrize("bad", ["a red circle", "a red blue circle on the left, white background", "hello"])
def test_parse_caption_rejects_incomplete_or_ambiguous(bad):
    with pytest.raises(ValueError):
        parse_caption(bad)
