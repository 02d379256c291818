"""Cached latents in shards: the two extra keys, their safe encoding, and who may use them.

`cache-latents` adds to every sample the clean latent x0 = VAE posterior mean × scaling_factor (fp32, exactly
what training computes from the `jpg`) as `latent.npy`, and the caption's text-encoder hidden states as
`txt_emb.npy` (fp16 by default, to keep shards small; fp32 on request). Both are `.npy` bytes read with
`allow_pickle=False`, so a shard from elsewhere can never run code.

The shards' manifest carries the record (`cache` in its outputs). A training stage uses the keys only when the
record matches its own teacher: the same VAE files (weights and config, so the same scaling factor), the same
text encoder and tokenizer files, and the same training resolution. The parts are identified by the sha256 of
their files, not by the teacher's name or folder: a stage-1 student carries its teacher's VAE and text encoder
byte for byte, so `distill-steps --teacher runs/guided/student` may use shards cached for the base teacher.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from snapdistill.errors import SnapdistillError
from snapdistill.manifest import read_manifest

LATENT = "latent.npy"       # x0 = posterior mean x scaling_factor, fp32 [C, h, w]
EMBEDDING = "txt_emb.npy"   # text encoder hidden states of `txt`, [L, D]
TEXT_DTYPES = {"fp16": np.float16, "fp32": np.float32}
FORMAT = 1


def npy_bytes(array: np.ndarray) -> bytes:
    """`array` as the bytes of a `.npy` file (no pickle: plain numeric arrays only)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_array(data: bytes, *, shape: tuple[int, ...]) -> np.ndarray:
    """The float array of `.npy` bytes, refused (ValueError) unless it has `shape`; never unpickles."""
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.dtype.kind != "f":
        raise ValueError(f"cached array of dtype {array.dtype}, not floating point")
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"cached array of shape {list(array.shape)}, expected {list(shape)}")
    return array


def _files_sha256(paths: list[Path]) -> str:
    """sha256 over the files under `paths` (folders or files): each relative name, then its content."""
    h = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            h.update(f"{root.name}/{f.relative_to(root) if root.is_dir() else ''}\n".encode())
            with open(f, "rb") as stream:
                while chunk := stream.read(1 << 23):
                    h.update(chunk)
    return h.hexdigest()


def parts_sha256(model_path: Path, *, single_file: bool) -> dict[str, str]:
    """{"vae_sha256", "text_sha256"}: the identity of what decides the cached values (reads the parts' files;
    a single-file checkpoint is identified by the whole file)."""
    path = Path(model_path)
    if single_file:
        whole = _files_sha256([path])
        return {"vae_sha256": whole, "text_sha256": whole}
    return {"vae_sha256": _files_sha256([path / "vae"]),
            "text_sha256": _files_sha256([path / "text_encoder", path / "tokenizer"])}


def cache_identity(pipe, *, model_path: Path, single_file: bool, size: int) -> dict:
    """What a cache made with this teacher at this training side must match (see `check_cache`)."""
    return {**parts_sha256(model_path, single_file=single_file), "resolution": int(size),
            "scaling_factor": float(pipe.vae.config.scaling_factor)}


def cache_record(shards: Path) -> dict | None:
    """The cache record of a shard folder's manifest, or None when its shards carry no cached latents."""
    manifest = read_manifest(Path(shards)) or {}
    record = (manifest.get("outputs") or {}).get("cache")
    if record is None:
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise SnapdistillError(f"{shards}: cached latents of an unknown format; rebuild them with "
                               "`snapdistill cache-latents`")
    return record


def check_cache(record: dict, identity: dict, *, shards: Path, teacher: str, text: bool = True) -> None:
    """Refuse, in one line, cached shards that were not made for this teacher's VAE, text encoder (unless `text`
    is False: `distill-decoder` reads only the latents) and training resolution."""
    remedy = (f"rebuild them with `snapdistill cache-latents --teacher {teacher} --resolution "
              f"{identity['resolution']}` or train on the uncached shards")
    made = f"{shards}: cached latents were made"
    if record.get("vae_sha256") != identity["vae_sha256"] or record.get("scaling_factor") != identity["scaling_factor"]:
        raise SnapdistillError(f"{made} with another VAE (teacher {record.get('teacher')}); {remedy}")
    if text and record.get("text_sha256") != identity["text_sha256"]:
        raise SnapdistillError(f"{made} with another text encoder (teacher {record.get('teacher')}); {remedy}")
    if record.get("resolution") != identity["resolution"]:
        raise SnapdistillError(f"{made} at {record.get('resolution')} px, but this run trains at "
                               f"{identity['resolution']} px; {remedy}")


def decode_cached(sample: dict, record: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent [C,h,w], text embedding [L,D]) of a raw webdataset sample; raises when either is missing, not
    a float `.npy` or of another shape than the cache record says."""
    missing = [key for key in (LATENT, EMBEDDING) if key not in sample]
    if missing:
        raise ValueError(f"no {' or '.join(missing)} member")
    latent = npy_array(sample[LATENT], shape=record["latent_shape"])
    emb = npy_array(sample[EMBEDDING], shape=record["text_shape"])
    return torch.from_numpy(latent.astype(np.float32, copy=False)), torch.from_numpy(emb)
