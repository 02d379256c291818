"""The toy judge: a small CNN that reads a toy image's attributes, and the metrics built on it.

Its exact-caption accuracy on generated images stands in for CLIP score, and its penultimate
features give a toy FID against real toy val images (`toy_fid`, the Fréchet distance).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from snapdistill.toy.world import ATTRIBUTES, TOY_SIZE, parse_caption, toy_pair

JUDGE_CONFIG = {"width": 32, "feature_dim": 128}


def images_to_tensor(images) -> torch.Tensor:
    """PIL images (or a tensor already in [-1, 1]) as a float (N, 3, H, W) tensor in [-1, 1]."""
    if isinstance(images, torch.Tensor):
        return images.float()
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def attribute_targets(captions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per attribute, the index of each caption's true value (the judge's class labels)."""
    parsed = [parse_caption(c) for c in captions]
    return {k: torch.tensor([vals.index(p[k]) for p in parsed]) for k, vals in ATTRIBUTES.items()}


class ToyJudge(nn.Module):
    """Conv features of a 32 px image (kept spatial, since position is an attribute) and one head per attribute."""

    def __init__(self, width: int = 32, feature_dim: int = 128):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.SiLU(),  # 16
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),  # 8
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),  # 4
            nn.Flatten(),
            nn.Linear(2 * w * (TOY_SIZE // 8) ** 2, feature_dim), nn.SiLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, len(v)) for k, v in ATTRIBUTES.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        return {k: head(f) for k, head in self.heads.items()}


def _batched(judge: ToyJudge, x: torch.Tensor, fn, batch: int = 512) -> list:
    with torch.no_grad():
        return [fn(x[i : i + batch]) for i in range(0, len(x), batch)]


def features(judge: ToyJudge, images) -> torch.Tensor:
    """The judge's penultimate features (N, feature_dim) of images (PIL list or tensor in [-1, 1])."""
    judge.eval()
    x = images_to_tensor(images)
    return torch.cat(_batched(judge, x, judge.features)).double()


def predict_attributes(judge: ToyJudge, images) -> dict[str, torch.Tensor]:
    """Per attribute, the judge's predicted value index for each image."""
    judge.eval()
    x = images_to_tensor(images)
    outs = _batched(judge, x, lambda b: {k: v.argmax(1) for k, v in judge(b).items()})
    return {k: torch.cat([o[k] for o in outs]) for k in ATTRIBUTES}


def judge_images(judge: ToyJudge, images, captions: Sequence[str]) -> dict:
    """How well images show their captions: mean attribute accuracy, exact-caption accuracy, per attribute."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    pred = predict_attributes(judge, images)
    true = attribute_targets(captions)
    hits = {k: (pred[k] == true[k]) for k in ATTRIBUTES}
    per_attr = {k: float(h.float().mean()) for k, h in hits.items()}
    exact = torch.stack(list(hits.values())).all(0).float().mean()
    return {"acc": float(np.mean(list(per_attr.values()))), "exact": float(exact), "per_attribute": per_attr}


def frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """|mu_a − mu_b|² + tr(Σa + Σb − 2·(Σa·Σb)^½), with tr((Σa·Σb)^½) = Σ √eig(Σa·Σb)."""
    eig = np.linalg.eigvals(cov_a @ cov_b)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)


def toy_fid(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Toy FID: the Fréchet distance between Gaussians fitted to two sets of judge features."""
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


# Training ------------------------------------------------------------------------------------


def toy_tensors(split: str, n: int, *, seed: int = 0, start: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Items `start..start+n-1` of a split as an image tensor in [-1, 1] and their captions."""
    pairs = [toy_pair(split, i, seed=seed) for i in range(start, start + n)]
    return images_to_tensor([p[0] for p in pairs]), [p[1] for p in pairs]


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild corruptions that generated images show: blur, noise, a shade shift."""
    n = len(x)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(n, 1, 1, 1, generator=g) * 0.8
    x = x + mix * (blur - x)
    x = x + torch.randn(n, 3, 1, 1, generator=g) * 0.06
    x = x + torch.randn(x.shape, generator=g) * torch.rand(n, 1, 1, 1, generator=g) * 0.15
    return x.clamp(-1.2, 1.2)


def train_judge(
    *,
    seed: int = 0,  # seeds the data stream, the init and the augmentation
    steps: int = 1000,  # optimiser steps
    batch: int = 128,  # images per step
    lr: float = 2e-3,  # AdamW peak rate, cosine-decayed to 0
    n_train: int = 24576,  # distinct train images (reused across epochs)
    log=print,
) -> tuple[ToyJudge, dict]:
    """Train a judge from scratch on toy train images; return it and the recipe."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_all, caps = toy_tensors("train", n_train, seed=seed)
    y_all = attribute_targets(caps)
    judge = ToyJudge(**JUDGE_CONFIG)
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, n_train, (batch,), generator=g)
        logits = judge(_augment(x_all[idx], g))
        loss = sum(F.cross_entropy(logits[k], y_all[k][idx]) for k in ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"judge step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    recipe = {"seed": seed, "steps": steps, "batch": batch, "lr": lr, "n_train": n_train, **JUDGE_CONFIG}
    return judge.eval(), recipe


def save_judge(judge: ToyJudge, folder: Path) -> None:
    """Write the judge's weights (fp16 safetensors) and config into `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in judge.state_dict().items()}
    save_file(state, str(folder / "judge.safetensors"))
    (folder / "config.json").write_text(json.dumps(JUDGE_CONFIG, indent=2) + "\n", encoding="utf-8")


def load_judge_from(folder: Path, device: str = "cpu") -> ToyJudge:
    """A judge from a folder written by `save_judge` (raises OSError/ValueError when unreadable)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    judge = ToyJudge(**config)
    state = load_file(str(folder / "judge.safetensors"))
    judge.load_state_dict({k: v.float() for k, v in state.items()})
    return judge.to(device).eval()


def judge_stage(folder: Path, *, seed: int = 0, steps: int = 1000, n_val: int = 1024, log=print) -> dict:
    """Train the judge into `folder` (weights, config, manifest.json); return its metrics."""
    from snapdistill.manifest import write_manifest

    t0 = time.time()
    judge, recipe = train_judge(seed=seed, steps=steps, log=log)
    (Path(folder) / "manifest.json").unlink(missing_ok=True)  # the folder is unfinished until it is rewritten
    save_judge(judge, folder)
    judge = load_judge_from(folder)  # measure what is shipped (fp16 weights)
    x, caps = toy_tensors("val", n_val, seed=seed)
    real = judge_images(judge, x, caps)
    metrics = {"val_real": real, "n_val": n_val, "train_minutes": round((time.time() - t0) / 60, 2)}
    log(f"judge: exact {real['exact']:.4f} acc {real['acc']:.4f} on {n_val} real val images")
    write_manifest(folder, stage="toy-judge", config=recipe, metrics=metrics, seed=seed)
    return metrics
