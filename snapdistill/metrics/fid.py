"""FID on torchmetrics' `FrechetInceptionDistance`, with cached reference statistics.

The feature extractor is torch-fidelity's FID Inception v3 loaded from `--inception-weights PATH`
(torchmetrics passes the path to `NoTrainInceptionV3`, so nothing downloads), or any `nn.Module`
mapping uint8 images to features (tests use a small one). Reference images (COCO val2017) are
resized and centre-cropped to the generated images' square size. Their statistics are the metric's
own "real" state sums, cached as `.npz` under a key made of the file list (names, sizes, mtimes),
the preprocessing and the extractor's identity, so a second run skips them.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from snapdistill.errors import SnapdistillError
from snapdistill.manifest import atomic_write_bytes
from snapdistill.pixels import square_resize

# FID is biased upwards at small sample counts; numbers from fewer images are flagged, not hidden.
FID_RELIABLE_MIN = 2000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# How reference images are brought to the generated size; part of the cache key.
REFERENCE_PREP = "centre-crop+resize (area down, cubic up)"  # part of the cache key: caches of another prep miss
_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def module_identity(module: nn.Module) -> str:
    """A custom extractor's identity: its class and a hash of its weights."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return f"{type(module).__module__}.{type(module).__qualname__}:{h.hexdigest()[:16]}"


def reference_files(folder: Path, limit: int | None = None) -> list[Path]:
    """The reference images of a folder (sorted by name), optionally the first `limit`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SnapdistillError(f"{folder}: FID reference folder not found (e.g. COCO val2017/)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    files = files[:limit] if limit else files
    if len(files) < 2:
        raise SnapdistillError(f"{folder}: FID needs at least 2 reference images, found {len(files)}")
    return files


def reference_image(path: Path, size: int) -> np.ndarray:
    """A reference image as generated ones are shaped: centre crop, resized to `size` as build-data does
    (`square_resize`); uint8 HWC RGB."""
    with Image.open(path) as im:
        return square_resize(np.asarray(im.convert("RGB")), size)


def to_uint8_batch(images: Iterable) -> torch.Tensor:
    """PIL images or uint8 HWC arrays as a uint8 (N, 3, H, W) tensor, the extractor's input."""
    arr = np.stack([np.asarray(im.convert("RGB")) if isinstance(im, Image.Image) else np.asarray(im) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _atomic_savez(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


class FidScorer:
    """A `FrechetInceptionDistance` whose real (reference) side is set once and reused across runs."""

    def __init__(self, metric, identity: str, device: str = "cpu"):
        self.metric = metric.to(device)
        self.identity = identity
        self.device = device
        self.reference: dict | None = None

    @classmethod
    def inception(cls, weights: Path, device: str = "cpu") -> FidScorer:
        """torch-fidelity's FID Inception v3 (2048-d pool features) from a local weights file."""
        from torchmetrics.image.fid import FrechetInceptionDistance

        if not Path(weights).is_file():
            raise SnapdistillError(
                f"{weights}: Inception weights not found (torch-fidelity's weights-inception-2015-12-05-6726825d.pth)"
            )
        try:  # torch-fidelity unpickles the file in full: refuse one holding more than tensors before it does
            torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SnapdistillError(f"{weights}: does not load as plain tensors ({e.__class__.__name__}); refusing "
                                   "to load it (use torch-fidelity's FID Inception weights)") from e
        try:
            metric = FrechetInceptionDistance(feature=2048, reset_real_features=False,
                                              feature_extractor_weights_path=str(weights))
        except Exception as e:  # a wrong or unreadable file: torch-fidelity's strict load names the keys
            raise SnapdistillError(f"{weights}: not torch-fidelity's FID Inception weights ({str(e)[:200]})") from e
        return cls(metric, f"inception-v3-compat-2048:{file_sha256(weights)[:16]}", device)

    @classmethod
    def from_feature(cls, module: nn.Module, device: str = "cpu") -> FidScorer:
        """Any module mapping uint8 (N, 3, H, W) images to (N, d) features."""
        from torchmetrics.image.fid import FrechetInceptionDistance

        return cls(FrechetInceptionDistance(feature=module, reset_real_features=False), module_identity(module), device)

    def reference_key(self, files: list[Path], size: int) -> str:
        """Content key of reference statistics: file list with sizes and mtimes, preprocessing, extractor."""
        listing = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        blob = json.dumps({"files": listing, "size": size, "prep": REFERENCE_PREP, "extractor": self.identity})
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _update(self, batch: torch.Tensor, *, real: bool) -> None:
        with torch.no_grad():
            self.metric.update(batch.to(self.device), real=real)

    def _real_states(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self.metric, k) for k in _REAL_STATES}

    def _set_real_states(self, states: dict, *, keep: bool) -> None:
        # compute() sums states over processes, so only the main process holds the reference.
        for k in _REAL_STATES:
            ref = getattr(self.metric, k)
            value = torch.as_tensor(np.asarray(states[k])).to(ref.device, ref.dtype)
            setattr(self.metric, k, value if keep else torch.zeros_like(value))

    def set_reference(self, files: list[Path], size: int, cache_dir: Path, *, batch_size: int = 50,
                      rank: int = 0, world: int = 1) -> dict:
        """Load the reference statistics from the cache, or compute them (split over processes) and cache them."""
        key = self.reference_key(files, size)
        path = Path(cache_dir) / f"fid-ref-{key}.npz"
        cached = path.is_file()
        if cached:
            with np.load(path) as z:
                states = {k: z[k] for k in _REAL_STATES}
        else:
            mine = files[rank::world]
            for lo in range(0, len(mine), batch_size):
                self._update(to_uint8_batch([reference_image(p, size) for p in mine[lo : lo + batch_size]]), real=True)
            states = self._real_states()
            if world > 1:
                from accelerate.utils import reduce

                states = {k: reduce(v, "sum") for k, v in states.items()}
            states = {k: v.cpu().numpy() for k, v in states.items()}
            if rank == 0:
                _atomic_savez(path, **states, extractor=np.array(self.identity), size=np.array(size))
        self._set_real_states(states, keep=rank == 0)
        self.reference = {"key": key, "n_real": int(states["real_features_num_samples"]), "cached": cached,
                          "cache_file": str(path), "size": size}
        return self.reference

    def score(self, batches: Iterable[torch.Tensor], n_fake: int) -> dict:
        """FID of generated images (uint8 batches of this process's share) against the reference."""
        if self.reference is None:
            raise RuntimeError("set_reference() first")
        self.metric.reset()  # clears the generated side only (reset_real_features=False)
        for batch in batches:
            self._update(batch, real=False)
        value = float(self.metric.compute())
        return {"fid": value, "n_fake": n_fake, "n_real": self.reference["n_real"],
                "reliable": n_fake >= FID_RELIABLE_MIN, "extractor": self.identity,
                "reference_key": self.reference["key"]}
