"""Block-removed students (BK-SDM): configs, weight copies, stock-diffusers loading and bad input."""

import json
import re

import pytest
import torch

from snapdistill.distill.arch import ARCHS, block_map, build_student, student_config, unet_params
from snapdistill.distill.student import copy_student, guided_student
from snapdistill.errors import SnapdistillError
from snapdistill.models.tiny import tiny_components
from snapdistill.models.tiny_sd import tiny_sd_unet

# SD 1.5's UNet config (stable-diffusion-v1-5/unet/config.json, fields that differ from diffusers' defaults).
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
# (residual layers per down stage, per up stage, mid block kept) of each arch for SD's 4-stage layout.
EXPECTED = {
    "same": ([2, 2, 2, 2], [3, 3, 3, 3], True),
    "bk-base": ([1, 1, 1, 1], [2, 2, 2, 2], True),
    "bk-small": ([1, 1, 1, 1], [2, 2, 2, 2], False),
    "bk-tiny": ([1, 1, 1], [2, 2, 2], False),
}


def _inputs(n=2, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.tensor([20, 700]), torch.randn(n, 77, dim, generator=g)


def _out(unet, z, t, c):
    with torch.no_grad():
        return unet(z, t, encoder_hidden_states=c).sample


def _equal_modules(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def teacher():
    return tiny_sd_unet(seed=0)


@pytest.mark.parametrize("sd2", [False, True])
def test_each_arch_has_the_expected_blocks_and_fewer_params(sd2):
    teacher = tiny_sd_unet(seed=0, sd2=sd2)
    params = []
    for arch in ARCHS:
        student, _ = build_student(teacher, arch)
        down, up, mid = EXPECTED[arch]
        assert [len(b.resnets) for b in student.down_blocks] == down
        assert [len(b.resnets) for b in student.up_blocks] == up
        assert [len(getattr(b, "attentions", [])) for b in student.down_blocks] == [n for n in down[:3]] + [0] * (len(down) - 3)
        assert (student.mid_block is not None) == mid
        params.append(sum(p.numel() for p in student.parameters()))
        assert params[-1] == unet_params(student_config(teacher.config, arch))
        assert _out(student, *_inputs()).shape == (2, 4, 8, 8)
    assert params[0] > params[1] > params[2] > params[3]


def test_sd15_arch_param_counts_match_bk_sdm():
    """On SD 1.5's real config: an 860M teacher UNet; BK-SDM's UNets are 0.58B (base), 0.48B (small) and
    0.32B (tiny): its whole models, 0.76B / 0.66B / 0.50B, less the ~0.18B of text encoder and VAE decoder."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        sd15 = UNet2DConditionModel.from_config(SD15_UNET).config
    counts = {arch: unet_params(student_config(sd15, arch)) for arch in ARCHS}
    assert counts == {"same": 859_520_964, "bk-base": 579_384_964, "bk-small": 482_346_884, "bk-tiny": 323_384_964}
    tiny = student_config(sd15, "bk-tiny")
    assert tiny["block_out_channels"] == [320, 640, 1280] and tiny["up_block_types"][0] == "CrossAttnUpBlock2D"


def test_loaded_configs_keep_removed_mid_blocks_removed(tmp_path, teacher):
    """A config read from disk lists absent keys in `_use_default_values`; from_config must not reset the
    mid block of a student built from it."""
    from diffusers import UNet2DConditionModel

    cfg = json.loads(json.dumps(dict(teacher.config)))
    del cfg["mid_block_type"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(tmp_path))
    assert "mid_block_type" in loaded.config["_use_default_values"]
    assert student_config(loaded.config, "bk-small")["mid_block_type"] is None
    assert build_student(loaded, "bk-small")[0].mid_block is None


@pytest.mark.parametrize("arch", ARCHS)
def test_student_saves_and_loads_in_stock_diffusers(tmp_path, teacher, arch):
    from diffusers import UNet2DConditionModel

    student, _ = build_student(teacher, arch)
    student.save_pretrained(tmp_path / "unet")
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert loaded.config.layers_per_block == student.config.layers_per_block
    assert loaded.config.mid_block_type == student.config.mid_block_type
    assert _equal_modules(loaded, student)
    # Weights loaded by memory map sit at other alignments, so CPU kernels may round differently (~1e-7).
    torch.testing.assert_close(_out(loaded, *_inputs()), _out(student, *_inputs()), rtol=1e-5, atol=1e-5)


def test_same_arch_reproduces_the_teacher_exactly(teacher):
    student = copy_student(teacher, "same")
    assert student is not teacher
    torch.testing.assert_close(_out(student, *_inputs()), _out(teacher, *_inputs()), rtol=0, atol=0)


def test_kept_blocks_hold_the_teachers_weights(teacher):
    base, report = build_student(teacher, "bk-base")
    for i in range(4):
        assert _equal_modules(base.down_blocks[i].resnets[0], teacher.down_blocks[i].resnets[0])
        # An up stage keeps its first and last pairs; its middle one is dropped.
        assert _equal_modules(base.up_blocks[i].resnets[0], teacher.up_blocks[i].resnets[0])
        assert _equal_modules(base.up_blocks[i].resnets[1], teacher.up_blocks[i].resnets[2])
    assert _equal_modules(base.down_blocks[1].attentions[0], teacher.down_blocks[1].attentions[0])
    assert _equal_modules(base.up_blocks[3].attentions[1], teacher.up_blocks[3].attentions[2])
    assert _equal_modules(base.mid_block, teacher.mid_block) and _equal_modules(base.conv_out, teacher.conv_out)
    assert "up_blocks.1.resnets.1" in report.dropped and "down_blocks.3.resnets.1" in report.dropped
    assert report.new == [] and "mid_block" not in report.dropped


def test_tiny_student_maps_up_stages_past_the_removed_one(teacher):
    tiny, report = build_student(teacher, "bk-tiny")
    assert block_map(teacher.config, "bk-tiny").up_from == (1, 2, 3)
    assert _equal_modules(tiny.up_blocks[0].resnets[1], teacher.up_blocks[1].resnets[2])
    assert _equal_modules(tiny.up_blocks[0].upsamplers, teacher.up_blocks[1].upsamplers)
    assert _equal_modules(tiny.down_blocks[2].attentions[0], teacher.down_blocks[2].attentions[0])
    assert tiny.down_blocks[2].downsamplers is None
    assert report.dropped == [
        "down_blocks.0.attentions.1", "down_blocks.0.resnets.1", "down_blocks.1.attentions.1",
        "down_blocks.1.resnets.1", "down_blocks.2.attentions.1", "down_blocks.2.resnets.1",
        "down_blocks.2.downsamplers", "down_blocks.3", "up_blocks.0", "up_blocks.1.attentions.1",
        "up_blocks.1.resnets.1", "up_blocks.2.attentions.1", "up_blocks.2.resnets.1", "up_blocks.3.attentions.1",
        "up_blocks.3.resnets.1", "mid_block"]


def test_guided_block_removed_student_has_a_zero_guidance_input(teacher):
    student = guided_student(teacher, cond_dim=16, arch="bk-small")
    assert student.config.time_cond_proj_dim == 16 and student.mid_block is None
    assert student.time_embedding.cond_proj.weight.abs().max() == 0
    w = torch.randn(2, 16)
    plain = copy_student(teacher, "bk-small")
    z, t, c = _inputs()
    with torch.no_grad():  # the zeroed projection makes w irrelevant: the student is the plain bk-small copy
        torch.testing.assert_close(student(z, t, c, timestep_cond=w).sample, _out(plain, z, t, c), rtol=0, atol=0)


@pytest.mark.parametrize("arch, config, message", [
    ("bk-base", {}, "down_blocks.0 (CrossAttnDownBlock2D) has 1 layer"),
    ("bk-small", {"layers_per_block": 2, "mid_block_type": None}, "no mid_block to remove"),
    ("bk-tiny", {"layers_per_block": 2, "block_out_channels": (32, 64)}, "up_blocks.1 takes 64 channels"),
])
def test_underivable_archs_name_the_block(arch, config, message):
    from diffusers import UNet2DConditionModel

    base = dict(tiny_components()["unet"].config)  # 2 stages of 1 layer
    base.pop("_use_default_values")  # would reset mid_block_type to its default
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config({**base, **config})
    with pytest.raises(SnapdistillError, match=re.escape(message)):
        student_config(unet.config, arch)


def test_unknown_arch_lists_the_known_ones(teacher):
    with pytest.raises(SnapdistillError, match="unknown --student-arch 'bk-huge'; choose one of same, bk-base, "
                                               "bk-small, bk-tiny"):
        copy_student(teacher, "bk-huge")


@pytest.mark.parametrize("arch, message", [
    ("bk-huge", "unknown --student-arch 'bk-huge'; choose one of same, bk-base, bk-small, bk-tiny"),
    ("bk-base", "down_blocks.0 (CrossAttnDownBlock2D) has 1 layer"),
])
def test_cli_bad_arch_is_one_line(cli, tmp_path, tiny_eps_dir, test_shards, arch, message):
    code, _, err = cli("distill-steps", "--teacher", tiny_eps_dir, "--shards", test_shards, "--out", tmp_path / "o",
                       "--from", 4, "--to", 2, "--max-steps", 1, "--batch-size", 2, "--student-arch", arch)
    assert code == 2 and message in err and err.count("\n") == 1


def test_distill_steps_bk_small_end_to_end(cli, tmp_path, test_shards):
    """Two steps of 4->2 distillation into a bk-small student; it samples in stock diffusers, one call per step."""
    from diffusers import StableDiffusionPipeline

    from snapdistill.models.tiny_sd import save_tiny_sd_pipeline

    teacher_dir = save_tiny_sd_pipeline(tmp_path / "teacher")
    out = tmp_path / "small"
    code, _, err = cli("distill-steps", "--teacher", teacher_dir, "--shards", test_shards, "--out", out,
                       "--from", 4, "--to", 2, "--max-steps", 2, "--batch-size", 2, "--checkpoint-every", 0,
                       "--ema-decay", 0, "--student-arch", "bk-small")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    common = manifest["config"]["common"]
    assert (common["student_arch"], common["feat_weight"], common["out_weight"]) == ("bk-small", 1.0, 1.0)
    losses = [json.loads(x)["loss"] for x in (out / "stats.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(v > 0 for v in losses)
    assert json.loads((out / "student" / "snapdistill.json").read_text())["student_arch"] == "bk-small"

    stock = StableDiffusionPipeline.from_pretrained(out / "student")
    teacher = StableDiffusionPipeline.from_pretrained(teacher_dir)
    assert stock.unet.mid_block is None and [len(b.resnets) for b in stock.unet.down_blocks] == [1, 1, 1, 1]
    assert sum(p.numel() for p in stock.unet.parameters()) < 0.6 * sum(p.numel() for p in teacher.unet.parameters())
    rows = [0]
    stock.unet.register_forward_pre_hook(lambda _m, args: rows.__setitem__(0, rows[0] + args[0].shape[0]))
    images = stock(["a red square"], num_inference_steps=2, guidance_scale=1.0, height=32, width=32,
                   output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(images)).all() and rows[0] == 2


def test_every_arch_derives_from_the_shipped_toy_teacher():
    """The toy teacher is cut to each BK-SDM arch: pairs per stage, mid block, stages and parameters as the recipe says."""
    from diffusers import UNet2DConditionModel

    from snapdistill.distill.arch import student_config, unet_params
    from snapdistill.toy.paths import WEIGHTS_DIR

    teacher = UNet2DConditionModel.load_config(WEIGHTS_DIR / "teacher" / "unet")
    full = unet_params(teacher)
    shapes = {}
    for arch in ("bk-base", "bk-small", "bk-tiny"):
        cfg = student_config(teacher, arch)
        shapes[arch] = (cfg["layers_per_block"], cfg["mid_block_type"], len(cfg["down_block_types"]))
        assert unet_params(cfg) < full
    assert shapes == {"bk-base": ([1, 1, 1], "UNetMidBlock2DCrossAttn", 3), "bk-small": ([1, 1, 1], None, 3),
                      "bk-tiny": ([1, 1], None, 2)}
    assert unet_params(student_config(teacher, "bk-small")) <= 0.7 * full  # the ">= 30% fewer"


def test_bench_arch_figures():
    """Per-arch ratios against teacher16_cfg: parameters, speed (teacher time / student time), toy FID."""
    from snapdistill.bench.toy import arch_figures

    row = {"params": 100, "s_per_image": 0.2, "fid": 10.0, "acc": 0.9, "exact": 0.7}
    rows = {"teacher16_cfg": row, "direct8": {**row, "s_per_image": 0.05, "fid": 11.0},
            "arch_bk_small8": {**row, "params": 60, "s_per_image": 0.04, "fid": 12.0, "acc": 0.8}}
    figures = arch_figures(rows)
    assert set(figures) == {"direct8", "arch_bk_small8"}
    small = figures["arch_bk_small8"]
    assert small["param_ratio"] == 0.6 and small["speed_ratio"] == 5.0 and small["fid_ratio"] == 1.2
    assert small["acc"] == 0.8 and figures["direct8"]["param_ratio"] == 1.0
    assert arch_figures({"direct8": row}) == {}


def test_distill_guidance_bk_tiny_student(cli, tmp_path, test_shards):
    """Stage 1 into a bk-tiny student: a guidance input on 3 stages; --feat-weight and --dry-run resolve as set."""
    from diffusers import UNet2DConditionModel

    from snapdistill.models.tiny_sd import save_tiny_sd_pipeline

    teacher_dir = save_tiny_sd_pipeline(tmp_path / "teacher", seed=1)
    args = ("distill-guidance", "--teacher", teacher_dir, "--shards", test_shards, "--out", tmp_path / "g",
            "--max-steps", 1, "--batch-size", 2, "--checkpoint-every", 0, "--cond-dim", 16, "--student-arch", "bk-tiny")
    code, out, _ = cli(*args, "--dry-run")
    assert code == 0 and json.loads(out)["common"]["feat_weight"] == 1.0
    code, _, err = cli(*args, "--feat-weight", "0.5", "--out-weight", "2")
    assert code == 0, err
    common = json.loads((tmp_path / "g" / "manifest.json").read_text())["config"]["common"]
    assert (common["feat_weight"], common["out_weight"]) == (0.5, 2.0)
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "g" / "student" / "unet")
    assert unet.config.time_cond_proj_dim == 16 and list(unet.config.block_out_channels) == [16, 32, 64]
    assert unet.mid_block is None and [len(b.resnets) for b in unet.up_blocks] == [2, 2, 2]


def test_progressive_rounds_remove_blocks_once(tmp_path, test_shards):
    """Round 1 cuts the teacher to bk-base; round 2 starts from that student as it is (cutting again would fail)."""
    from snapdistill.distill import steps_stage
    from snapdistill.distill.loop import TrainConfig
    from snapdistill.distill.stage import CommonConfig
    from snapdistill.models.tiny_sd import save_tiny_sd_pipeline

    teacher_dir = save_tiny_sd_pipeline(tmp_path / "teacher", seed=2)
    train = TrainConfig(max_steps=1, batch_size=2, checkpoint_every=0, ema_decay=0)
    common = CommonConfig(teacher=str(teacher_dir), shards=test_shards, out=tmp_path / "p", train=train,
                          val_prompts=1, student_arch="bk-base")
    steps_stage.run(steps_stage.StepsConfig(common=common, from_steps=8, to_steps=2, mode="progressive"))
    for folder in ("round-1-8to4", "round-2-4to2", "."):
        config = json.loads((tmp_path / "p" / folder / "student" / "unet" / "config.json").read_text())
        assert config["layers_per_block"] == [1, 1, 1, 1] and config["mid_block_type"] == "UNetMidBlock2DCrossAttn"
