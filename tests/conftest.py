"""Shared fixtures: tiny random SD-architecture pipelines saved as diffusers folders, and a CLI runner."""

from __future__ import annotations

import os
import sys

import pytest
import torch

# Tiny models gain nothing from a second thread, and oversubscribed OpenMP threads spin (20x slower
# measured when another process holds a core). SNAPDISTILL_TEST_THREADS=2 runs the suite on two (`make spread`
# measures the golden tests' spread at 1 and 2).
torch.set_num_threads(int(os.environ.get("SNAPDISTILL_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_eps_dir(tmp_path_factory):
    """A tiny random epsilon-prediction SD pipeline folder (32 px, 8x8 latents)."""
    from snapdistill.models.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-eps"), seed=0)


@pytest.fixture(scope="session")
def tiny_v_dir(tmp_path_factory):
    """A tiny random v-prediction (SD 2.x style) pipeline folder."""
    from snapdistill.models.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-v"), seed=1, prediction_type="v_prediction")


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `snapdistill ARGS...` in-process; returns (exit_code, stdout, stderr)."""
    from snapdistill.cli import main

    def run(*args: str):
        monkeypatch.setattr(sys, "argv", ["snapdistill", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def run_ok():
    """Run `snapdistill ARGS...` in-process and require exit code 0: for module-scoped fixtures, which cannot use
    `cli` (its capsys and monkeypatch are per test). Output is not captured."""
    from snapdistill.cli import main

    def run(*args) -> None:
        old, sys.argv = sys.argv, ["snapdistill", *map(str, args)]
        try:
            main()
        except SystemExit as e:  # click ends a standalone run with exit code 0
            assert not e.code, e.code
        finally:
            sys.argv = old

    return run


def write_test_shards(folder, n: int = 24, per_shard: int = 8, size: int = 32):
    """Shards in build-data's layout (`{prefix}-%06d.tar`: jpg, txt, json) plus a manifest."""
    import io
    import json

    import numpy as np
    import webdataset as wds
    from PIL import Image

    from snapdistill.manifest import write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    colours = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}
    rng = np.random.default_rng(0)
    for shard in range((n + per_shard - 1) // per_shard):
        with wds.TarWriter(str(folder / f"toy-{shard:06d}.tar")) as sink:
            for i in range(shard * per_shard, min(n, (shard + 1) * per_shard)):
                name = list(colours)[i % 3]
                pixels = np.full((size, size, 3), 255, np.uint8)
                x, y = rng.integers(0, size // 2, 2)
                pixels[y : y + size // 2, x : x + size // 2] = colours[name]
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
                sink.write({"__key__": f"{i:06d}", "jpg": buf.getvalue(), "txt": f"a {name} square",
                            "json": json.dumps({"source": "test", "original_width": size,
                                                "original_height": size}).encode()})
    names = [f"toy-{shard:06d}.tar" for shard in range((n + per_shard - 1) // per_shard)]
    per = {name: min(per_shard, n - k * per_shard) for k, name in enumerate(names)}
    write_manifest(folder, stage="build-data", config={"test": True}, outputs={"shards": names},
                   counts={"records": n, "per_shard": per})
    return folder


@pytest.fixture(scope="session")
def test_shards(tmp_path_factory):
    return write_test_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory):
    """A factory of tiny random open_clip models: make(name, image_size=, patch_size=, seed=) registers the
    config with open_clip under `name` and returns (config file, model, model config)."""
    import json

    import open_clip

    def make(name: str, *, image_size: int = 224, patch_size: int = 32, seed: int = 0):
        model_cfg = {
            "embed_dim": 16,
            "vision_cfg": {"image_size": image_size, "layers": 1, "width": 32, "head_width": 16,
                           "patch_size": patch_size},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
        }
        path = tmp_path_factory.mktemp("clip") / f"{name}.json"
        path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(path)
        torch.manual_seed(seed)
        return path, open_clip.create_model(name, pretrained=None), model_cfg

    return make
