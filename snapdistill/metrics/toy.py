"""Toy-world metrics for a `sample --toy-val N` folder, and same-noise MSE against a reference run.

The shipped toy judge stands in for CLIP and Inception: `acc` (mean attribute accuracy) and `exact`
(all four attributes right) play the part of the CLIP score, and the Fréchet distance between its
features of generated and of held-out real toy val images is the toy FID. The judge's own functions
(`snapdistill.toy.judge`) compute all of them; this module splits the work per image so that several
processes can share it, and puts the pieces back together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from snapdistill.errors import SnapdistillError
from snapdistill.metrics import open_images, row_key

# Real toy val images the generated ones are compared with (the count the judge's manifest reports on).
TOY_FID_REAL = 1024


def load_toy_judge(device: str = "cpu"):
    """The shipped toy judge (a one-line error naming the rebuild command when its files are broken)."""
    from snapdistill.toy.paths import load_judge

    return load_judge(device)


def real_toy_features(judge, n: int = TOY_FID_REAL, seed: int = 0) -> np.ndarray:
    """Judge features (n, d) of the first `n` real toy val images: captions the training split never holds."""
    from snapdistill.toy.judge import features, toy_tensors

    x, _ = toy_tensors("val", n, seed=seed)
    return features(judge, x.to(next(judge.parameters()).device)).cpu().numpy()


def judge_per_image(judge, images: list[Image.Image], captions: list[str]) -> list[dict]:
    """Per image: which attributes the judge reads as captioned ({attribute: bool}) and its features."""
    from snapdistill.toy.judge import attribute_targets, features, images_to_tensor, predict_attributes

    try:
        true = attribute_targets(captions)
    except ValueError as e:  # parse_caption: not a toy caption
        raise SnapdistillError(f"toy metrics need toy captions (a run of `sample --toy-val N`): {e}") from e
    x = images_to_tensor(images).to(next(judge.parameters()).device)
    pred = predict_attributes(judge, x)
    feats = features(judge, x).cpu().numpy()
    return [{"hits": {k: bool(pred[k][i] == true[k][i]) for k in true}, "features": feats[i]}
            for i in range(len(images))]


def toy_summary(per_image: list[dict], real_features: np.ndarray) -> dict:
    """acc, exact, per-attribute accuracy and toy FID of one run, from its per-image judge results."""
    from snapdistill.toy.judge import toy_fid

    hits = np.array([[r["hits"][k] for k in sorted(r["hits"])] for r in per_image], dtype=np.float64)
    names = sorted(per_image[0]["hits"])
    fake = np.stack([r["features"] for r in per_image])
    # With one image the covariance is undefined; report no FID rather than a wrong one.
    fid = toy_fid(torch.from_numpy(fake), torch.from_numpy(real_features)) if len(fake) > 1 else None
    return {
        "acc": float(hits.mean()),
        "exact": float(hits.all(1).mean()),
        "per_attribute": {k: float(v) for k, v in zip(names, hits.mean(0))},
        "fid": fid,
        "n": len(per_image),
        "n_real": int(len(real_features)),
    }


def pair_with_reference(rows: list[dict], ref_rows: list[dict], *, run: Path, ref: Path) -> list[dict]:
    """For each row, the reference row with the same style, prompt index and seed (and the same prompt)."""
    by_key = {row_key(r): r for r in ref_rows}
    paired = []
    for r in rows:
        other = by_key.get(row_key(r))
        if other is None or other["prompt"] != r["prompt"]:
            raise SnapdistillError(
                f"{ref}: has no image for prompt {r['index']} seed {r['seed']} of {run}; "
                "a same-noise reference must be sampled from the same prompts and --seed"
            )
        paired.append(other)
    return paired


def image_mse(paths: list[Path], ref_paths: list[Path]) -> np.ndarray:
    """Per-image mean squared error between two image lists, pixels in [0, 1]."""
    out = []
    for path, ref_path, a, b in zip(paths, ref_paths, open_images(paths), open_images(ref_paths)):
        x = np.asarray(a, dtype=np.float64) / 255.0
        y = np.asarray(b, dtype=np.float64) / 255.0
        if x.shape != y.shape:
            raise SnapdistillError(f"{path}: size {a.size} differs from its reference {ref_path} ({b.size})")
        out.append(float(((x - y) ** 2).mean()))
    return np.array(out)
