import json

import pytest

from snapdistill.errors import SnapdistillError
from snapdistill.sampling.prompts import (
    HPS_STYLES,
    coco_first_captions,
    collect_prompts,
    hps_benchmark,
    prompts_from_file,
)


def test_txt_json_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("a red circle\n\n  a blue square  \n")
    (tmp_path / "b.json").write_text(json.dumps(["x", "y"]))
    (tmp_path / "c.jsonl").write_text('{"prompt": "p0", "id": 3}\n\n{"prompt": "p1"}\n')
    assert prompts_from_file(tmp_path / "a.txt") == ["a red circle", "a blue square"]
    assert prompts_from_file(tmp_path / "b.json") == ["x", "y"]
    assert prompts_from_file(tmp_path / "c.jsonl") == ["p0", "p1"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", "\n \n", "no prompts found"),
        ("bad.json", "[1, 2]", "JSON list of prompt strings"),
        ("broken.json", "[", "invalid JSON"),
        ("bad.jsonl", '{"text": "x"}\n', '"prompt" string'),
        ("broken.jsonl", '{"prompt": "x"}\n\n{"prompt": \n', r"broken.jsonl:3: invalid JSON"),
        ("latin1.txt", b"caf\xe9", "cannot read prompt file"),
    ],
)
def test_bad_prompt_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SnapdistillError, match=message):
        prompts_from_file(path)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(SnapdistillError, match="cannot read"):
        prompts_from_file(tmp_path / "nope.txt")


def _coco(tmp_path, with_annotations=True):
    data = {
        "images": [{"id": 7}, {"id": 3}, {"id": 5}],
        "annotations": [
            {"image_id": 3, "id": 1, "caption": "three first "},
            {"image_id": 7, "id": 2, "caption": "seven first"},
            {"image_id": 3, "id": 3, "caption": "three second"},
            {"image_id": 5, "id": 4, "caption": "five first"},
            {"image_id": 7, "id": 5, "caption": "seven second"},
        ],
    }
    if not with_annotations:
        del data["annotations"]
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_first_caption_per_image_in_file_order(tmp_path):
    path = _coco(tmp_path)
    assert coco_first_captions(path) == ["seven first", "three first", "five first"]
    assert coco_first_captions(path, limit=2) == ["seven first", "three first"]


def test_coco_without_annotations(tmp_path):
    with pytest.raises(SnapdistillError, match="no 'annotations'"):
        coco_first_captions(_coco(tmp_path, with_annotations=False))


def test_hps_benchmark_layout(tmp_path):
    for k, style in enumerate(HPS_STYLES):
        (tmp_path / f"{style}.json").write_text(json.dumps([f"{style} {i}" for i in range(3 + k)]))
    items = hps_benchmark(tmp_path, limit=2)
    assert [(it.style, it.index, it.prompt) for it in items[:3]] == [
        ("anime", 0, "anime 0"), ("anime", 1, "anime 1"), ("concept-art", 0, "concept-art 0")]
    assert len(items) == 8
    (tmp_path / "photo.json").unlink()
    with pytest.raises(SnapdistillError, match="photo.json: HPSv2 style file missing"):
        hps_benchmark(tmp_path)


def test_exactly_one_source(tmp_path):
    with pytest.raises(SnapdistillError, match="exactly one prompt source"):
        collect_prompts()
    with pytest.raises(SnapdistillError, match="exactly one prompt source"):
        collect_prompts(prompts=["a"], coco=_coco(tmp_path))
    items = collect_prompts(prompts=["a", "b", "c"], limit=2)
    assert [(it.index, it.prompt, it.style) for it in items] == [(0, "a", None), (1, "b", None)]
