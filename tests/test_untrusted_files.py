"""Files from elsewhere (weights, checkpoints) are read as data, so nothing in them can run.

Every `torch.load` in the package passes `weights_only=True` and no module imports pickle. Resume checkpoints
are tested in test_distill_loop.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

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

