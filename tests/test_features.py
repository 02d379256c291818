"""Feature distillation: hooks on matching blocks, the feature loss, and its weighting against the output loss."""

import pytest
import torch

from snapdistill.diffusion import DiffusionModel, NoiseSchedule
from snapdistill.distill.arch import ARCHS
from snapdistill.distill.features import FeatureKD, stage_pairs, with_features
from snapdistill.distill.grid import final_alpha_cumprod, student_grid
from snapdistill.distill.guided import Guided, StudentKind
from snapdistill.distill.losses import Batch, GuidanceLoss, StepLoss
from snapdistill.distill.student import copy_student, guided_student
from snapdistill.models.tiny import SD_SCHEDULER_CONFIG
from snapdistill.models.tiny_sd import tiny_sd_unet

SCHEDULE = NoiseSchedule.from_scheduler_config(SD_SCHEDULER_CONFIG)
PAIRS = {
    "same": [("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"), ("down_blocks.2", "down_blocks.2"),
             ("down_blocks.3", "down_blocks.3"), ("mid_block", "mid_block"), ("up_blocks.0", "up_blocks.0"),
             ("up_blocks.1", "up_blocks.1"), ("up_blocks.2", "up_blocks.2"), ("up_blocks.3", "up_blocks.3")],
    "bk-small": [("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"),
                 ("down_blocks.2", "down_blocks.2"), ("down_blocks.3", "down_blocks.3"), ("up_blocks.0", "up_blocks.0"),
                 ("up_blocks.1", "up_blocks.1"), ("up_blocks.2", "up_blocks.2"), ("up_blocks.3", "up_blocks.3")],
    # The student's last down stage no longer down-samples: it pairs with the teacher's last layer of that stage.
    "bk-tiny": [("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"),
                ("down_blocks.2.attentions.1", "down_blocks.2"), ("up_blocks.1", "up_blocks.0"),
                ("up_blocks.2", "up_blocks.1"), ("up_blocks.3", "up_blocks.2")],
}


@pytest.fixture(scope="module")
def teacher_unet():
    return tiny_sd_unet(seed=0).requires_grad_(False)


def _batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(latents=torch.randn(n, 4, 8, 8, generator=g), cond=torch.randn(n, 77, 32, generator=g),
                 uncond=torch.randn(1, 77, 32, generator=g))


def _model(unet, w_dim=None):
    return Guided(DiffusionModel(unet, SCHEDULE, "epsilon"), w_dim)


def _step_loss(teacher_unet, **kw):
    kw = {"grid": student_grid(SD_SCHEDULER_CONFIG, 4), "substeps": 2, "space": "eps",
          "final_alpha_cumprod": final_alpha_cumprod(SD_SCHEDULER_CONFIG, SCHEDULE), **kw}
    return StepLoss(teacher=_model(teacher_unet), student=StudentKind("epsilon", None), schedule=SCHEDULE, **kw)


def _value(loss, student_unet, seed=0):
    with torch.no_grad():
        return loss(student_unet, _batch(), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["same", "bk-small", "bk-tiny"])
def test_hooks_capture_matching_shapes_of_the_paired_blocks(teacher_unet, arch):
    student_unet = copy_student(teacher_unet, arch)
    assert stage_pairs(teacher_unet.config, student_unet.config) == PAIRS[arch]
    kd = FeatureKD(_step_loss(teacher_unet, cfg_prob=1.0), student_unet)
    _value(kd, student_unet)
    channels = {"down_blocks.0": 16, "down_blocks.1": 32, "down_blocks.2": 64, "down_blocks.2.attentions.1": 64,
                "down_blocks.3": 64, "mid_block": 64,
                "up_blocks.0": 64, "up_blocks.1": 64, "up_blocks.2": 32, "up_blocks.3": 16}
    for t_name, s_name in kd.pairs:
        f_t, f_s = kd.teacher.features[t_name], kd.student.features[s_name]
        assert f_t.shape == f_s.shape and f_t.shape[:2] == (2, channels[t_name])
        assert not f_t.requires_grad
    assert kd.student.features["up_blocks.0"].shape[-1] == (4 if arch == "bk-tiny" else 2)
    assert kd.student.features["down_blocks.2"].shape[-1] == (2 if arch == "bk-tiny" else 1)
    kd.remove()


@pytest.mark.parametrize("cfg_prob", [0.0, 1.0])
def test_feature_loss_is_zero_for_the_teacher_itself_and_positive_otherwise(teacher_unet, cfg_prob):
    """Two teacher substeps: the output loss is > 0 even for a copy, but its features are matched at the first
    substep, the student's own (z, t), so they agree exactly. With or without the doubled CFG batch."""
    copy = copy_student(teacher_unet)
    same = _step_loss(teacher_unet, cfg_prob=cfg_prob)
    assert _value(same, copy).min() > 0
    features_only = FeatureKD(same, copy, out_weight=0.0, feat_weight=1.0)
    assert _value(features_only, copy).abs().max() == 0
    for arch in ("bk-base", "bk-tiny"):
        student = copy_student(teacher_unet, arch)
        kd = FeatureKD(_step_loss(teacher_unet, cfg_prob=cfg_prob), student, out_weight=0.0, feat_weight=1.0)
        value = _value(kd, student)
        assert value.shape == (2,) and (value > 1e-6).all()


def test_cfg_features_are_combined_like_the_output(teacher_unet):
    """A teacher guided at s records f_u + s·(f_c − f_u) of each block: checked on the mid block."""
    student = guided_student(teacher_unet, cond_dim=16)
    loss = GuidanceLoss(teacher=_model(teacher_unet), student=StudentKind("epsilon", 16), schedule=SCHEDULE,
                        guidance_range=(3.0, 3.0))
    kd = FeatureKD(loss, student)
    _value(kd, student, seed=5)
    # Replay the draws of GuidanceLoss to get its (z, t).
    gen, batch = torch.Generator().manual_seed(5), _batch()
    t = torch.randint(0, 1000, (2,), generator=gen)
    eps = torch.randn(batch.latents.shape, generator=gen)
    alpha, sigma = SCHEDULE.alpha_sigma(t)
    z = alpha.view(-1, 1, 1, 1) * batch.latents + sigma.view(-1, 1, 1, 1) * eps
    seen = {}
    teacher_unet.mid_block.register_forward_hook(lambda _m, _a, out: seen.__setitem__("mid", out))
    with torch.no_grad():
        teacher_unet(z, t, encoder_hidden_states=batch.cond)
        f_c = seen["mid"]
        teacher_unet(z, t, encoder_hidden_states=batch.uncond.expand_as(batch.cond))
        f_u = seen["mid"]
    teacher_unet._forward_hooks.clear()
    torch.testing.assert_close(kd.teacher.features["mid_block"], f_u + 3.0 * (f_c - f_u), atol=1e-5, rtol=1e-5)
    kd.remove()


def test_weights_combine_output_and_feature_losses(teacher_unet):
    student = copy_student(teacher_unet, "bk-base")
    inner = _step_loss(teacher_unet, cfg_prob=0.0)
    out = _value(inner, student)
    feat = _value(FeatureKD(inner, student, out_weight=0.0, feat_weight=1.0), student)
    assert (feat > 0).all()
    torch.testing.assert_close(_value(FeatureKD(inner, student, out_weight=1.0, feat_weight=0.0), student), out,
                               rtol=0, atol=0)
    torch.testing.assert_close(_value(FeatureKD(inner, student, out_weight=0.5, feat_weight=2.0), student),
                               0.5 * out + 2.0 * feat)
    assert with_features(inner, student, out_weight=1.0, feat_weight=0.0) is inner


def test_feature_loss_trains_the_student_and_leaves_the_teacher(teacher_unet):
    student = copy_student(teacher_unet, "bk-small").train()
    kd = FeatureKD(_step_loss(teacher_unet, cfg_prob=0.0), student, out_weight=0.0, feat_weight=1.0)
    kd(student, _batch(), torch.Generator().manual_seed(0)).mean().backward()
    assert student.down_blocks[0].resnets[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher_unet.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_default_feature_weight_follows_the_arch(tmp_path, arch):
    from snapdistill.distill.stage import CommonConfig

    common = CommonConfig(teacher="toy", shards=tmp_path, out=tmp_path, student_arch=arch)
    assert common.feat_weight == (0.0 if arch == "same" else 1.0)
    assert CommonConfig(teacher="toy", shards=tmp_path, out=tmp_path, student_arch=arch, feat_weight=0.3).feat_weight == 0.3
