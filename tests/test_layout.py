"""The package layout follows the pipeline (build-data -> recaption -> distill -> sample -> eval): every package
imports only from packages below it, no module takes part in an import circle, and no file grows past 400 lines.

The checks read the source (every `import` statement, those inside functions and under `TYPE_CHECKING` included),
so an import that runs only on one code path is held to the same rule as one at the top of a file.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import snapdistill

PACKAGE = Path(snapdistill.__file__).resolve().parent
MAX_LINES = 400

# Layers, lowest first. A module may import its own package and any package of a lower layer; packages of one
# layer never import each other. The base layer is plumbing every stage shares (errors, manifests, the one resize).
LAYERS = [
    {"", "errors", "jsonl", "manifest", "inventory", "outdir", "dist", "pixels"},
    {"diffusion"},      # schedules, conversions, solvers: pure maths on tensors
    {"models"},         # loading pipelines, tiny and small models, encoders, memory estimates
    {"toy"},            # the toy world, its teacher and judge
    {"metrics"},        # HPS, CLIP score, FID, the toy judge's scores
    {"data"},           # build-data, recaption, cache-latents
    {"sampling"},       # sample, inspect
    {"distill"},        # the training stages and routes
    {"evaluation"},     # eval
    {"bench", "cli"},   # the entry points
    {"__main__"},
]
RANK = {name: k for k, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("snapdistill", *path.relative_to(PACKAGE).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported snapdistill module, line) for every import statement of a module, resolved to modules where
    `from package import module` names one."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            if target == "snapdistill" or target.startswith("snapdistill."):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.append((sub if sub in MODULES else target, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("snapdistill")]
    return [(target, line) for target, line in found if target != name]


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_layer():
    assert {_package(m) for m in MODULES} <= set(RANK), {_package(m) for m in MODULES} - set(RANK)


def test_every_import_goes_down_the_layers():
    upward = []
    for name, targets in GRAPH.items():
        here = _package(name)
        for target, line in targets:
            there = _package(target)
            if there != here and RANK[there] >= RANK[here] and RANK[here] > 0:
                upward.append(f"{MODULES[name].relative_to(PACKAGE.parent)}:{line} imports {target}")
            elif there != here and RANK[here] == 0 and RANK[there] > 0:
                upward.append(f"{MODULES[name].relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not upward, "imports from a package at or above the importer's layer:\n" + "\n".join(sorted(set(upward)))


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan); a package's `__init__` is a module like
    any other, so `pkg/__init__` importing `pkg.mod` that imports names from `pkg` is a circle too."""
    edges = {m: {t for t, _ in GRAPH[m] if t in MODULES} for m in MODULES}
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in MODULES:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert _circles() == []


def test_the_circle_check_sees_a_circle(monkeypatch):
    """The check is not vacuous: a made-up edge back from the routes' config to the route that reads it is a circle."""
    a, b = "snapdistill.distill.steps_config", "snapdistill.distill.steps_stage"
    assert any(t == a for t, _ in GRAPH[b])
    monkeypatch.setitem(GRAPH, a, [*GRAPH[a], (b, 1)])
    assert [a, b] in _circles()


@pytest.mark.parametrize("path", sorted(MODULES.values()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_file_over_400_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_every_module_imports_in_a_fresh_interpreter():
    """The static checks above read the source; this one runs it, so a module that fails to import is caught."""
    names = sorted(m for m in MODULES if not m.endswith("__main__"))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr[-2000:]
