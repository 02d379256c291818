"""Small decoder folders: a stock diffusers VAE folder plus `decoder.json`, the latent space it was trained for.

A pipeline's latent space is (latent channels, the scaling between diffusion-space and VAE latents, the
downsampling factor). `distill-decoder` records the teacher's in `decoder.json`; `sample --decoder` and
`inspect --decoder` refuse a decoder whose latent space differs from the model's, before any image is made.
An `AutoencoderTiny` decodes diffusion-space latents (its own scaling_factor is 1.0), so the teacher's
scaling can only be read from the record; an `AutoencoderKL` carries it in its config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from snapdistill.errors import SnapdistillError
from snapdistill.manifest import atomic_write_text
from snapdistill.models.small_decoder import scale_mismatch

RECORD = "decoder.json"
CLASSES = ("AutoencoderKL", "AutoencoderTiny")


@dataclass(frozen=True)
class LatentSpace:
    channels: int
    scaling_factor: float | None   # None: unknown (an AutoencoderTiny without a record)
    downsample: int

    def differs(self, other: LatentSpace) -> list[str]:
        """What differs, in words (empty when `other` decodes the same latents)."""
        out = []
        if self.channels != other.channels:
            out.append(f"latent channels {other.channels} vs {self.channels}")
        if None not in (self.scaling_factor, other.scaling_factor) and scale_mismatch(self.scaling_factor,
                                                                                      other.scaling_factor):
            out.append(f"scaling factor {other.scaling_factor:g} vs {self.scaling_factor:g}")
        if self.downsample != other.downsample:
            out.append(f"downsampling {other.downsample}x vs {self.downsample}x")
        return out


def read_record(folder: Path) -> dict | None:
    from snapdistill.jsonl import read_json_object

    return read_json_object(Path(folder) / RECORD, "decoder record")


def write_record(folder: Path, **fields) -> Path:
    path = Path(folder) / RECORD
    atomic_write_text(path, json.dumps(fields, indent=2) + "\n")
    return path


def latent_space(vae_config, record: dict | None = None) -> LatentSpace:
    """The latent space a VAE (config, and its folder's record when it has one) decodes."""
    config = dict(vae_config)
    if record and "teacher_scaling_factor" in record:
        scale = float(record["teacher_scaling_factor"])
    elif config.get("_class_name", "AutoencoderKL") == "AutoencoderTiny" or "decoder_block_out_channels" in config:
        scale = None
    else:
        scale = float(config.get("scaling_factor", 0.18215))
    blocks = config.get("block_out_channels") or config["decoder_block_out_channels"]
    return LatentSpace(int(config["latent_channels"]), scale, 2 ** (len(blocks) - 1))


def drop_derived_keys(config_path: Path) -> None:
    """Remove from a saved AutoencoderTiny config.json the `block_out_channels` its __init__ registers itself (a copy
    of decoder_block_out_channels): saved, diffusers warns on every load that it is not an __init__ argument."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("_class_name") == "AutoencoderTiny" and config.pop("block_out_channels", None) is not None:
        atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def pipeline_latent_space(pipe, vae_dir: Path | None = None) -> LatentSpace:
    """The latent space of a loaded pipeline (its vae folder's record read when given)."""
    return latent_space(pipe.vae.config, read_record(vae_dir) if vae_dir else None)


def load_decoder(folder: Path, *, dtype=None, device: str = "cpu"):
    """(the VAE of a small-decoder folder, its LatentSpace); one-line errors for a folder that is not one."""
    from diffusers import AutoencoderKL, AutoencoderTiny
    from diffusers.utils import logging as diffusers_logging

    from snapdistill.jsonl import read_json_object

    folder = Path(folder)
    config = read_json_object(folder / "config.json", "VAE config")
    if config is None:
        raise SnapdistillError(f"{folder}: not a decoder folder (no config.json); pass distill-decoder's "
                               "OUT/decoder")
    name = config.get("_class_name")
    if name not in CLASSES:
        raise SnapdistillError(f"{folder}: a {name or 'unknown'} folder, not a VAE ({' or '.join(CLASSES)})")
    cls = AutoencoderKL if name == "AutoencoderKL" else AutoencoderTiny
    # A folder AutoencoderTiny.save_pretrained wrote holds the block_out_channels its __init__ registers, and diffusers
    # warns on loading it ("passed ... but are not expected"); that key is harmless, so the warning is held back.
    verbosity = diffusers_logging.get_verbosity()
    if cls is AutoencoderTiny and "block_out_channels" in config:
        diffusers_logging.set_verbosity_error()
    try:
        vae = cls.from_pretrained(folder, local_files_only=True, **({"dtype": dtype} if dtype else {}))
    except (OSError, ValueError) as e:
        raise SnapdistillError(f"{folder}: could not load the decoder ({str(e).splitlines()[0]})") from e
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return vae.to(device).eval(), latent_space(vae.config, read_record(folder))


def swap_decoder(pipe, folder: Path, model_space: LatentSpace):
    """Put the small decoder of `folder` into `pipe` (in place), refusing one trained for another latent space."""
    vae, space = load_decoder(folder, dtype=pipe.vae.dtype, device=str(pipe.device))
    differ = model_space.differs(space)
    if differ:
        raise SnapdistillError(f"--decoder {folder}: trained for another teacher ({'; '.join(differ)}); "
                               "use a decoder distilled from this model's teacher")
    pipe.vae = vae
    return pipe


__all__ = ["LatentSpace", "RECORD", "latent_space", "load_decoder", "pipeline_latent_space",
           "read_record", "swap_decoder", "write_record"]
