"""Files from elsewhere (weights, checkpoints, shards) are read as data, so nothing in them can run.

Every `torch.load` in the package passes `weights_only=True` and no module imports pickle; shards decode only
their image and caption; the FID Inception file is checked before torch-fidelity reads it. Resume checkpoints
are tested in test_distill_loop.py.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

import snapdistill

PACKAGE = Path(snapdistill.__file__).resolve().parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _torch_loads(tree: ast.AST):
    """Every `torch.load(...)` call node."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            yield node


def _weights_only_true(call: ast.Call) -> bool:
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def test_the_sources_are_found():
    assert len(SOURCES) > 50 and PACKAGE / "distill" / "loop.py" in SOURCES


def test_no_weights_only_false_anywhere():
    found = [f"{p.relative_to(PACKAGE)}:{n}" for p in SOURCES
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "weights_only=False" in line]
    assert not found, f"weights_only=False in {', '.join(found)}"


def test_every_torch_load_passes_weights_only_true():
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found += [f"{path.relative_to(PACKAGE)}:{c.lineno}" for c in _torch_loads(tree) if not _weights_only_true(c)]
    assert not found, f"torch.load without weights_only=True at {', '.join(found)}"


def test_the_check_sees_a_bad_call():
    """The two checks above could fail: they flag a call without the argument, and one with it False."""
    tree = ast.parse("import torch\ntorch.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)")
    assert [_weights_only_true(c) for c in _torch_loads(tree)] == [False, False, True]


def test_no_module_imports_pickle():
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(PACKAGE)}:{node.lineno}" for n in names
                      if n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib")]
    assert not found, f"pickle imported at {', '.join(found)}"


class _Payload:
    """Unpickling this creates the file `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_pickle_member_in_a_training_shard_is_never_unpickled(tmp_path):
    import io

    import webdataset as wds
    from PIL import Image

    from snapdistill.distill.data import ShardPairs

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="JPEG")
    with wds.TarWriter(str(tmp_path / "s-000000.tar")) as sink:
        for i in range(2):
            sink.write({"__key__": f"{i:06d}", "jpg": buf.getvalue(), "txt": "a red square",
                        "pyd": pickle.dumps(_Payload(tmp_path / "pwned"))})
    pixels, captions = next(ShardPairs([str(tmp_path / "s-000000.tar")], size=8).batches(2))
    assert pixels.shape == (2, 3, 8, 8) and captions == ["a red square"] * 2
    assert not (tmp_path / "pwned").exists()


def test_inception_weights_holding_a_pickle_are_refused_unread(tmp_path):
    from snapdistill.errors import SnapdistillError
    from snapdistill.metrics.fid import FidScorer

    torch.save({"w": torch.zeros(1), "x": _Payload(tmp_path / "pwned")}, tmp_path / "inception.pth")
    with pytest.raises(SnapdistillError, match="does not load as plain tensors .*refusing to load it"):
        FidScorer.inception(tmp_path / "inception.pth")
    assert not (tmp_path / "pwned").exists()
