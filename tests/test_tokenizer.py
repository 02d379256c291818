from snapdistill.models.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer


def test_clip_ids_are_real():
    tok = build_clip_tokenizer()
    assert len(tok) == CLIP_VOCAB_SIZE == 49408
    assert tok("red").input_ids == [49406, 736, 49407]
    # Same ids as open_clip's own tokenizer for a whole prompt.
    from open_clip.tokenizer import SimpleTokenizer

    text = "a red circle on the left, white background"
    assert tok(text).input_ids[1:-1] == SimpleTokenizer().encode(text)


def test_padding_to_77_with_endoftext():
    ids = build_clip_tokenizer()("red", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[:3] == [49406, 736, 49407] and set(ids[3:]) == {49407}


def test_tokenizer_survives_pipeline_folder(tiny_eps_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_eps_dir / "tokenizer")
    assert tok("red").input_ids == [49406, 736, 49407]
    assert tok.model_max_length == 77
