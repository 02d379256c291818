"""Block-removed students (BK-SDM, Kim et al. 2023): fewer residual+attention pairs, no mid block, one
stage fewer. Each is a stock `UNet2DConditionModel` whose config differs from the teacher's only in
diffusers' own fields, so `UNet2DConditionModel.from_pretrained` loads it unchanged.

- `bk-base`: one residual(+attention) pair removed per down stage and per up stage. A down stage keeps
  its first pair (the one that follows the change of resolution); an up stage loses the one before its
  last (its last pair takes the skip connection from the stage above, so it must stay).
- `bk-small`: bk-base without the mid block (`mid_block_type=None`).
- `bk-tiny`: bk-small without the innermost stage: its down stage, its up stage and the down-sampler
  that fed it (fewer `block_out_channels` / `down_block_types` / `up_block_types`).

diffusers builds up stage i with `layers_per_block[reversed i] + 1` layers, so one tuple sets both
sides: a down stage of L pairs always faces an up stage of L + 1. BK-SDM removes exactly one pair on
each side, so for SD 1.x/2.x these fields give its block counts exactly (down 1 / up 2 pairs per
stage), its released bk-tiny config (three cross-attention stages, 320/640/1280) and its copy map from
teacher to student layers. What they cannot express is removing a different number of pairs on the two
sides, e.g. an up-only cut for a teacher whose down stages hold a single pair: such an arch is refused,
naming the stage.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from snapdistill.errors import SnapdistillError

ARCHS = ("same", "bk-base", "bk-small", "bk-tiny")

# Config fields that hold one value per down stage (when given as lists), trimmed with the innermost stage.
_PER_STAGE = ("block_out_channels", "down_block_types", "layers_per_block", "attention_head_dim",
              "num_attention_heads", "cross_attention_dim", "transformer_layers_per_block", "only_cross_attention")


@dataclass(frozen=True)
class BlockMap:
    """Where each student layer comes from in the teacher."""

    down: tuple[tuple[int, ...], ...]  # student down stage i keeps these layers of teacher down stage i
    up_from: tuple[int, ...]           # student up stage i is teacher up stage up_from[i] ...
    up: tuple[tuple[int, ...], ...]    # ... keeping these of its layers


@dataclass(frozen=True)
class InitReport:
    dropped: list[str]   # teacher modules with no place in the student
    new: list[str]       # student parameters not taken from the teacher


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise SnapdistillError(f"unknown --student-arch '{arch}'; choose one of {', '.join(ARCHS)}")
    return arch


def _layers(config: Mapping) -> list[int]:
    """Residual layers per down stage."""
    lpb = config["layers_per_block"]
    return [lpb] * len(config["down_block_types"]) if isinstance(lpb, int) else list(lpb)


def _without_innermost_stage(config: dict, arch: str) -> dict:
    n = len(config["down_block_types"])
    if n < 2:
        raise SnapdistillError(f"{arch}: the teacher has a single stage (down_blocks.0); there is no inner stage to remove")
    channels = config["block_out_channels"]
    if channels[-1] != channels[-2]:
        raise SnapdistillError(
            f"{arch}: up_blocks.1 takes {channels[-1]} channels from below, but without down_blocks.{n - 1} it "
            f"would get {channels[-2]}; the innermost stage cannot be removed")
    for key in _PER_STAGE:
        if isinstance(config.get(key), (list, tuple)):
            config[key] = list(config[key])[:-1]
    config["up_block_types"] = list(config["up_block_types"])[1:]
    if config.get("reverse_transformer_layers_per_block") is not None:
        config["reverse_transformer_layers_per_block"] = list(config["reverse_transformer_layers_per_block"])[1:]
    return config


def student_config(teacher_config: Mapping, arch: str) -> dict:
    """The student UNet's config: the teacher's, with BK-SDM's blocks removed (diffusers' own fields only)."""
    config = dict(teacher_config)
    # Keys a loaded config.json lacked are listed here, and from_config would reset them to the defaults
    # (SD 1.5's config has no mid_block_type): every value is made explicit instead.
    config.pop("_use_default_values", None)
    if check_arch(arch) == "same":
        return config
    layers = _layers(config)
    for i, n in enumerate(layers):
        if n < 2:
            raise SnapdistillError(
                f"{arch}: down_blocks.{i} ({config['down_block_types'][i]}) has {n} layer; removing a "
                "residual+attention pair needs at least 2")
    config["layers_per_block"] = [n - 1 for n in layers]
    if arch in ("bk-small", "bk-tiny"):
        if config.get("mid_block_type") is None:
            raise SnapdistillError(f"{arch}: the teacher has no mid_block to remove")
        config["mid_block_type"] = None
    if arch == "bk-tiny":
        config = _without_innermost_stage(config, arch)
    return config


def block_map(teacher_config: Mapping, arch: str) -> BlockMap:
    """Teacher stage and layer indices of every student layer (see the module docstring for the choice)."""
    student_config(teacher_config, arch)  # refuses what cannot be derived
    layers = _layers(teacher_config)
    n = len(layers)
    trim = int(arch != "same")
    kept = n - 1 if arch == "bk-tiny" else n
    down = tuple(tuple(range(layers[i] - trim)) for i in range(kept))
    up_from = tuple(range(n - kept, n))
    up = []
    for k in up_from:
        last = layers[n - 1 - k]  # teacher up stage k has layers[n-1-k] + 1 layers; index `last` is the last
        up.append((*range(last - trim), last))
    return BlockMap(down=down, up_from=up_from, up=tuple(up))


_LAYER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$")
_UP_BLOCK = re.compile(r"^up_blocks\.(\d+)\.(.+)$")


def teacher_key(key: str, m: BlockMap) -> str:
    """The teacher state-dict key a student key is copied from."""
    if hit := _LAYER.match(key):
        kind, i, part, j, rest = hit[1], int(hit[2]), hit[3], int(hit[4]), hit[5]
        if kind == "down_blocks":
            return f"down_blocks.{i}.{part}.{m.down[i][j]}.{rest}"
        return f"up_blocks.{m.up_from[i]}.{part}.{m.up[i][j]}.{rest}"
    if hit := _UP_BLOCK.match(key):
        return f"up_blocks.{m.up_from[int(hit[1])]}.{hit[2]}"
    return key


def _modules(unused: list[str], keys: list[str]) -> list[str]:
    """The smallest set of module names covering `unused` keys and nothing else, in state-dict order."""
    def prefixes(key: str) -> list[str]:
        parts = key.split(".")
        return [".".join(parts[:k]) for k in range(1, len(parts))]

    total = Counter(p for k in keys for p in prefixes(k))
    left = Counter(p for k in unused for p in prefixes(k))
    out: list[str] = []
    for key in unused:
        name = next((p for p in prefixes(key) if left[p] == total[p]), key)
        if name not in out:
            out.append(name)
    return out


@torch.no_grad()
def init_from_teacher(student: torch.nn.Module, teacher: torch.nn.Module, arch: str) -> InitReport:
    """Copy the teacher's weights into the student's corresponding layers; report what had no place."""
    m = block_map(teacher.config, arch)
    teacher_sd = teacher.state_dict()
    loaded, new = {}, []
    for key, value in student.state_dict().items():
        source = teacher_key(key, m)
        if source not in teacher_sd:
            new.append(key)
            continue
        if teacher_sd[source].shape != value.shape:
            raise SnapdistillError(f"{arch}: student {key} {tuple(value.shape)} does not fit teacher {source} "
                                   f"{tuple(teacher_sd[source].shape)}")
        loaded[key] = teacher_sd[source]
    student.load_state_dict(loaded, strict=False)
    used = {teacher_key(k, m) for k in loaded}
    return InitReport(dropped=_modules([k for k in teacher_sd if k not in used], list(teacher_sd)), new=new)


def build_student(teacher_unet, arch: str, **overrides) -> tuple[torch.nn.Module, InitReport]:
    """A student UNet of `arch` (config fields in `overrides` set on top), initialised from the teacher."""
    from diffusers import UNet2DConditionModel

    student = UNet2DConditionModel.from_config({**student_config(teacher_unet.config, arch), **overrides})
    return student, init_from_teacher(student, teacher_unet, arch)


def unet_params(config: Mapping) -> int:
    """Parameter count of the UNet a config describes (built on the meta device: no memory, no init)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(config))
    return sum(p.numel() for p in unet.parameters())
