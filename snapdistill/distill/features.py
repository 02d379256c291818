"""Feature-level distillation (BK-SDM): the student's block outputs regress the teacher's.

Forward hooks record the outputs of the down blocks, the mid block and the up blocks that teacher and
student both have. `FeatureKD` wraps a `GuidanceLoss` or `StepLoss` and adds the mean over these stages of
the per-stage MSE to the output-level loss (BK-SDM sums the stages and leaves the mid block out).

Features are taken from each model's first call in a loss evaluation, which both losses make at the
student's (z, t). A call on the doubled CFG batch [uncond; cond] is combined like the output:
f_u + s·(f_c − f_u), so a guided teacher's features are its guided ones and s = 1 gives the conditional
branch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from snapdistill.diffusion.guidance import cfg
from snapdistill.distill.guided import Guided, StudentKind
from snapdistill.errors import SnapdistillError


def _last_layer(config: Mapping, i: int) -> str:
    """The last layer of down stage i: its output is the stage's output before the down-sampler."""
    lpb = config["layers_per_block"]
    last = (lpb if isinstance(lpb, int) else lpb[i]) - 1
    kind = "attentions" if "CrossAttn" in config["down_block_types"][i] else "resnets"
    return f"down_blocks.{i}.{kind}.{last}"


def stage_pairs(teacher_config: Mapping, student_config: Mapping) -> list[tuple[str, str]]:
    """(teacher module, student module) pairs whose outputs match in shape.

    Down stages pair by index; the mid block pairs when both have one; up stages pair from the output end.
    A student with fewer stages has no down-sampler after its last down stage, so that stage pairs with the
    teacher stage's last layer, before its down-sampler (as BK-SDM-Tiny does).
    """
    n_t, n_s = len(teacher_config["down_block_types"]), len(student_config["down_block_types"])
    pairs = [(f"down_blocks.{i}" if i < n_s - 1 or n_s == n_t else _last_layer(teacher_config, i),
              f"down_blocks.{i}") for i in range(n_s)]
    if teacher_config.get("mid_block_type") and student_config.get("mid_block_type"):
        pairs.append(("mid_block", "mid_block"))
    pairs += [(f"up_blocks.{i + n_t - n_s}", f"up_blocks.{i}") for i in range(n_s)]
    return pairs


def _combined(feature: torch.Tensor, n: int, s: torch.Tensor) -> torch.Tensor:
    """A block output of a call on n samples: as is, or CFG-combined when the call ran on [uncond; cond]."""
    if feature.shape[0] == n:
        return feature
    f_u, f_c = feature.chunk(2)
    return cfg(eps_u=f_u, eps_c=f_c, s=s)


class BlockRecorder:
    """Records named block outputs of `unet` during the first `Guided` call made through it after `arm()`.

    The hooks sit on the modules of the unwrapped UNet: a DDP wrapper calls the same modules, so they fire
    whichever of the two the loss is handed.
    """

    def __init__(self, unet: torch.nn.Module, names: list[str]):
        self.names = names
        self.features: dict[str, torch.Tensor] | None = None
        self._raw: dict[str, torch.Tensor] = {}
        self._listening = False
        modules = dict(unet.named_modules())
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in names]

    def _hook(self, name: str):
        def hook(_module, _args, output):
            if self._listening:
                self._raw[name] = output[0] if isinstance(output, tuple) else output
        return hook

    def arm(self) -> None:
        self.features = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def call(self, guided: Guided, z, t, cond, uncond, s):
        """`guided(z, t, cond, uncond, s)`, recording the block outputs when it is the first call since `arm()`."""
        self._listening = self.features is None
        try:
            pred = guided(z, t, cond, uncond, s)
        finally:
            self._listening = False
        if self.features is None:
            self.features = {name: _combined(self._raw[name], z.shape[0], s) for name in self.names}
            self._raw = {}
        return pred


class Recording:
    """A `Guided` model whose calls go through a `BlockRecorder`."""

    def __init__(self, guided: Guided, recorder: BlockRecorder):
        self.guided = guided
        self.recorder = recorder

    @property
    def takes_w(self) -> bool:
        return self.guided.takes_w

    @property
    def model(self):
        return self.guided.model

    def __call__(self, z, t, cond, uncond, s):
        return self.recorder.call(self.guided, z, t, cond, uncond, s)


@dataclasses.dataclass(frozen=True)
class RecordingStudent:
    """A `StudentKind` whose per-call `Guided` models go through a `BlockRecorder`."""

    kind: StudentKind
    recorder: BlockRecorder

    @property
    def takes_w(self) -> bool:
        return self.kind.takes_w

    def on(self, unet: torch.nn.Module, schedule) -> Recording:
        return Recording(self.kind.on(unet, schedule), self.recorder)


def feature_mse(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor],
                pairs: list[tuple[str, str]]) -> torch.Tensor:
    """Mean over matched stages of mean((f_student − f_teacher)²), per sample."""
    terms = []
    for t_name, s_name in pairs:
        f_t, f_s = teacher[t_name], student[s_name]
        if f_t.shape != f_s.shape:
            raise SnapdistillError(f"feature shapes differ: teacher {t_name} {tuple(f_t.shape)}, "
                                   f"student {s_name} {tuple(f_s.shape)}")
        err = (f_s.float() - f_t.float()) ** 2
        terms.append(err.mean(dim=tuple(range(1, err.ndim))))
    return torch.stack(terms).mean(dim=0)


class FeatureKD:
    """out_weight·(the wrapped loss) + feat_weight·(feature MSE), per sample; same call as the wrapped loss.

    `student_unet` is the unwrapped student the loss will be handed (maybe inside a DDP wrapper): its hooks
    go on its modules.
    """

    def __init__(self, loss, student_unet: torch.nn.Module, *, out_weight: float = 1.0, feat_weight: float = 1.0):
        self.pairs = stage_pairs(loss.teacher.model.unet.config, student_unet.config)
        self.teacher = BlockRecorder(loss.teacher.model.unet, [t for t, _ in self.pairs])
        self.student = BlockRecorder(student_unet, [s for _, s in self.pairs])
        self.loss = dataclasses.replace(loss, teacher=Recording(loss.teacher, self.teacher),
                                        student=RecordingStudent(loss.student, self.student))
        self.out_weight = out_weight
        self.feat_weight = feat_weight

    def __call__(self, student_unet: torch.nn.Module, batch, gen: torch.Generator) -> torch.Tensor:
        self.teacher.arm()
        self.student.arm()
        out = self.loss(student_unet, batch, gen)
        return self.out_weight * out + self.feat_weight * feature_mse(self.teacher.features, self.student.features,
                                                                      self.pairs)

    def remove(self) -> None:
        """Take the hooks off both UNets."""
        self.teacher.remove()
        self.student.remove()


def with_features(loss, student_unet: torch.nn.Module, *, out_weight: float, feat_weight: float):
    """`loss` itself with the default weights (1, 0), else wrapped in `FeatureKD` (hooks on `student_unet`)."""
    if (out_weight, feat_weight) == (1.0, 0.0):
        return loss
    return FeatureKD(loss, student_unet, out_weight=out_weight, feat_weight=feat_weight)
