"""The package layout follows the pipeline (build-data -> recaption -> distill -> sample -> eval): importing a
module never loads a stage above it.

Each check imports one module in a fresh interpreter and reads `sys.modules` afterwards, so it sees every
module pulled in at import time (imports inside functions are not seen here). For a package with rules, its
submodules are imported too, so the rule covers the whole package and not only its `__init__`.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import snapdistill

ROOT = Path(snapdistill.__file__).resolve().parent.parent
TOP_LEVEL = sorted(f"snapdistill.{m.name}" for m in pkgutil.iter_modules(snapdistill.__path__) if m.name != "__main__")

# module -> modules (each with its submodules) that importing it must not load
FORBIDDEN = {
    "snapdistill.models": ("snapdistill.toy", "snapdistill.sampling", "snapdistill.distill", "snapdistill.evaluation"),
    "snapdistill.diffusion": ("snapdistill.distill", "snapdistill.sampling", "snapdistill.evaluation", "snapdistill.data"),
    "snapdistill.distill.stage": ("snapdistill.sampling.stage", "snapdistill.evaluation"),
    "snapdistill.sampling.render": ("snapdistill.distill", "snapdistill.evaluation"),
    "snapdistill.metrics": ("snapdistill.evaluation", "snapdistill.distill"),
}

_PROBE = """
import importlib, json, pkgutil, sys
name = sys.argv[1]
module = importlib.import_module(name)
if sys.argv[2] == "all" and hasattr(module, "__path__"):
    for info in pkgutil.walk_packages(module.__path__, name + "."):
        importlib.import_module(info.name)
print(json.dumps(sorted(m for m in sys.modules if m == "snapdistill" or m.startswith("snapdistill."))))
"""


def loaded_after_import(name: str, *, submodules: bool) -> list[str]:
    """The snapdistill modules in `sys.modules` after importing `name` (and its submodules) in a fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", _PROBE, name, "all" if submodules else "one"],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, f"importing {name} failed:\n{result.stderr}"
    return json.loads(result.stdout.splitlines()[-1])


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("name", sorted(set(TOP_LEVEL) | set(FORBIDDEN)))
def test_import_loads_no_stage_above(name):
    loaded = loaded_after_import(name, submodules=name in FORBIDDEN)
    assert name in loaded
    for prefix in FORBIDDEN.get(name, ()):
        offending = [m for m in loaded if _within(m, prefix)]
        assert not offending, f"importing {name} loads {', '.join(offending)} (a stage above it in the pipeline)"
