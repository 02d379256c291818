import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from snapdistill.evaluation import stage
from snapdistill.manifest import manifest_sha256, write_manifest

PROMPTS = ["a red circle on the left", "a blue square at the top", "a green triangle"]


def fake_run(folder, pixels, *, prompts=PROMPTS, styles=None, steps=8, guidance=7.5, model="runs/x/student",
             source=None, seed=0, unet=8.0, s=0.25):
    """A folder laid out as `snapdistill sample` writes it, with the given images."""
    rows = []
    for i, (prompt, px) in enumerate(zip(prompts, pixels)):
        style = styles[i] if styles else None
        index = i if not styles else sum(1 for st in styles[:i] if st == style)
        file = f"images/{style}/{index:05d}.jpg" if style else f"images/{index:05d}-s{seed + index}.png"
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(px, np.uint8)).save(folder / file, **({"quality": 95} if style else {}))
        rows.append({"index": index, "prompt": prompt, "seed": seed + index, "style": style, "file": file})
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"model": model, "model_path": str(folder), "steps": steps, "guidance": guidance,
              "size": len(pixels[0]), "source": source or {"prompt": prompts}, "seed": seed}
    write_manifest(folder, stage="sample", config=config, metrics={"unet_calls_per_image": unet, "s_per_image": s},
                   seed=seed)
    return folder


class PixelFeatures(nn.Module):
    """Stand-in for Inception: mean colour and the first row of the red channel."""

    num_features = 11

    def forward(self, x):
        x = x.double()
        return torch.cat([x.mean((2, 3)), x[:, 0, 0, :8]], 1)


def _solid(value, n=3, size=32):
    return [np.full((size, size, 3), value + 7 * i, np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def tiny_clip(tiny_open_clip):
    config, model, _ = tiny_open_clip("snapdistill-tiny-eval-clip")
    torch.save(model.state_dict(), config.parent / "clip.pt")
    return config, config.parent / "clip.pt"


def _reference(folder, n=6):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i:012d}.jpg")
    return folder


def test_report_numbers_table_plots_and_manifest(tmp_path, tiny_clip):
    teacher = fake_run(tmp_path / "t16", _solid(100), steps=16, model="toy", unet=32.0, s=1.0)
    s4 = fake_run(tmp_path / "s4", [p + 20 for p in _solid(100)], steps=4, unet=4.0, s=0.1)
    s8 = fake_run(tmp_path / "s8", [p + 10 for p in _solid(100)], steps=8, unet=8.0, s=0.2)
    config = stage.EvalConfig(
        runs=[teacher, s4, s8], out=tmp_path / "eval", labels=["teacher", "direct", "direct"],
        clip_model=str(tiny_clip[0]), clip_checkpoint=tiny_clip[1], fid_reference=_reference(tmp_path / "coco"),
        fid_cache=tmp_path / "cache", mse_reference=teacher, grid_images=2, batch_size=2,
    )
    manifest = json.loads(stage.run(config, fid_feature=PixelFeatures()).read_text())
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    rows = {(r["label"], r["steps"]): r for r in report["rows"]}
    assert rows[("direct", 4)]["metrics"]["mse_vs_ref"]["mse"] == pytest.approx((20 / 255) ** 2)
    assert rows[("direct", 8)]["metrics"]["mse_vs_ref"] == {"mse": pytest.approx((10 / 255) ** 2), "n": 3,
                                                           "reference": str(teacher)}
    assert "mse_vs_ref" not in rows[("teacher", 16)]["metrics"]  # the reference itself
    fid = rows[("direct", 4)]["metrics"]["fid"]
    assert (fid["n_fake"], fid["n_real"], fid["reliable"]) == (3, 6, False) and fid["fid"] > 0
    clip = rows[("teacher", 16)]["metrics"]["clip"]
    assert clip["n"] == 3 and 0 <= clip["score"] <= 100
    assert (rows[("teacher", 16)]["unet_calls_per_image"], rows[("direct", 4)]["s_per_image"]) == (32.0, 0.1)

    md = (tmp_path / "eval" / "report.md").read_text()
    assert "| Model | Steps | FID | CLIP | MSE vs ref | UNet evals/img | s/img |" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| direct | 4 |"))
    assert line.endswith(f"| {(20 / 255) ** 2:.3g} | 4.0 | 0.100 |") and "†" in line
    assert "fewer than 2,000 images" in md and "HPS" not in md
    for png in ("quality_vs_steps.png", "grid.png"):
        assert Image.open(tmp_path / "eval" / png).size[0] > 100
    assert manifest["stage"] == "eval" and manifest["counts"]["images"] == 9
    runs = [i for i in manifest["inputs"] if i["role"] == "sample-run"]
    assert [i["manifest_sha256"] for i in runs] == [manifest_sha256(p) for p in (teacher, s4, s8)]
    assert (tmp_path / "eval" / "manifest.json").stat().st_mtime_ns >= (tmp_path / "eval" / "report.md").stat().st_mtime_ns

    # A second eval finds the reference statistics in the cache.
    stage.run(stage.EvalConfig(runs=[s4], out=tmp_path / "eval2", fid_reference=tmp_path / "coco",
                               fid_cache=tmp_path / "cache"), fid_feature=PixelFeatures())
    again = json.loads((tmp_path / "eval2" / "report.json").read_text())["rows"][0]["metrics"]["fid"]
    assert again["fid"] == pytest.approx(fid["fid"]) and again["reference_key"] == fid["reference_key"]


def test_hps_benchmark_run_is_scored_per_style(tmp_path, monkeypatch, tiny_open_clip):
    import open_clip

    from snapdistill.metrics import hps

    cfg, model, _ = tiny_open_clip("snapdistill-tiny-eval-hps", seed=1)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "hps.pt")
    monkeypatch.setattr(hps, "HPS_ARCH", cfg.stem)

    styles = [s for s in ("anime", "concept-art", "paintings", "photo") for _ in range(2)]
    prompts = [f"{s} picture {i}" for i, s in enumerate(styles)]
    pixels = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(8)]
    run = fake_run(tmp_path / "hps8", pixels, prompts=prompts, styles=styles, source={"hps_benchmark": "x"})
    stage.run(stage.EvalConfig(runs=[run], out=tmp_path / "eval", hps_checkpoint=tmp_path / "hps.pt",
                               hps_version="v2.1", batch_size=3))
    got = json.loads((tmp_path / "eval" / "report.json").read_text())
    direct = hps.HPSScorer.from_model(model, open_clip.get_tokenizer(cfg.stem), "v2.1")
    images = [Image.open(run / f"images/{s}/{i:05d}.jpg").convert("RGB") for s in dict.fromkeys(styles) for i in (0, 1)]
    scores = direct.score(images, prompts).reshape(4, 2)
    h = got["rows"][0]["metrics"]["hps"]
    assert got["hps_version"] == "v2.1" and h["version"] == "v2.1" and h["n"] == 8
    assert h["styles"]["paintings"]["mean"] == pytest.approx(scores[2].mean(), abs=1e-4)
    assert h["styles"]["paintings"]["std"] == pytest.approx(scores[2].std(), abs=1e-4)
    assert h["average"] == pytest.approx(scores.mean(), abs=1e-4)
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "| Model | Steps | HPS anime | HPS concept-art | HPS paintings | HPS photo | HPS avg |" in md
    assert "HPS: **v2.1**" in md and "not the full benchmark" in md


def test_guidance_sweep_resamples_each_run(tmp_path, tiny_eps_dir, tiny_clip):
    from snapdistill.sampling import stage as sample
    from snapdistill.sampling.prompts import PromptItem

    run = tmp_path / "tiny2"
    sample.run(sample.SampleConfig(model=str(tiny_eps_dir), out=run, steps=2, seed=3),
               [PromptItem(i, p) for i, p in enumerate(PROMPTS[:2])])
    # A second run left out of the sweep by --sweep-run: its model folder holds no model, so re-sampling it
    # would fail.
    other = fake_run(tmp_path / "other", _solid(50, n=2), prompts=PROMPTS[:2], steps=8)
    config = stage.EvalConfig(runs=[run, other], out=tmp_path / "eval", labels=["tiny", "other"],
                              guidance_sweep=[1.0, 7.5], sweep_runs=[run],
                              clip_model=str(tiny_clip[0]), clip_checkpoint=tiny_clip[1],
                              fid_reference=_reference(tmp_path / "coco"), fid_cache=tmp_path / "cache")
    stage.run(config, fid_feature=PixelFeatures())
    swept = json.loads((tmp_path / "eval" / "sweep" / "tiny-s2-g1" / "manifest.json").read_text())
    assert (swept["config"]["guidance"], swept["config"]["steps"], swept["seed"]) == (1.0, 2, 3)
    assert swept["metrics"]["unet_calls_per_image"] == 2  # no CFG at guidance 1: one UNet row per step
    assert not (tmp_path / "eval" / "sweep" / "tiny-s2-g7.5").exists()  # the run itself is that point
    rows = json.loads((tmp_path / "eval" / "report.json").read_text())["rows"]
    assert [(r["label"], r["guidance"], r["sweep"]) for r in rows] == [
        ("tiny", 7.5, False), ("other", 7.5, False), ("tiny", 1.0, True)]
    assert sorted(p.name for p in (tmp_path / "eval" / "sweep").iterdir()) == ["tiny-s2-g1"]
    assert all("fid" in r["metrics"] and "clip" in r["metrics"] for r in rows)
    assert Image.open(tmp_path / "eval" / "guidance_tradeoff.png").size[0] > 100
    assert "## Guidance sweep" in (tmp_path / "eval" / "report.md").read_text()


def test_toy_runs_get_judge_metrics_through_the_cli(tmp_path, cli):
    pytest.importorskip("snapdistill.toy.paths")
    from PIL import ImageFilter

    from snapdistill.errors import SnapdistillError
    from snapdistill.metrics.toy import load_toy_judge
    from snapdistill.toy.world import toy_pairs

    try:
        load_toy_judge()
    except SnapdistillError as e:
        pytest.skip(f"toy judge weights not available: {e}")
    pairs = list(toy_pairs("val", 16, seed=5))
    captions = [p[1] for p in pairs]
    sharp = [np.asarray(p[0]) for p in pairs]
    blurred = [np.asarray(p[0].filter(ImageFilter.GaussianBlur(3))) for p in pairs]
    t = fake_run(tmp_path / "t16", sharp, prompts=captions, steps=16, model="toy", source={"toy_val": 16})
    s = fake_run(tmp_path / "s4", blurred, prompts=captions, steps=4, source={"toy_val": 16})
    code, out, err = cli("eval", t, s, "--mse-reference", t, "--out", tmp_path / "eval")
    assert code == 0, err
    rows = {r["steps"]: r["metrics"] for r in json.loads((tmp_path / "eval" / "report.json").read_text())["rows"]}
    assert rows[16]["toy"]["acc"] > 0.95 and rows[16]["toy"]["n"] == 16 and rows[16]["toy"]["n_real"] == 1024
    assert rows[4]["toy"]["acc"] < rows[16]["toy"]["acc"] and rows[4]["toy"]["fid"] > 0
    assert rows[4]["mse_vs_ref"]["mse"] == pytest.approx(np.mean([
        ((b.astype(float) - a) ** 2).mean() for a, b in zip(sharp, blurred)]) / 255**2, rel=1e-9)
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "| Model | Steps | Judge acc | Exact | Toy FID | MSE vs ref | UNet evals/img | s/img |" in md


def test_split_over_processes_gives_the_same_rows(tmp_path, monkeypatch):
    import accelerate.utils

    run = stage.read_run(fake_run(tmp_path / "r", _solid(10, n=5), prompts=[f"p{i}" for i in range(5)]))
    fn = lambda ims, rows: [(r["index"], int(np.asarray(im)[0, 0, 0])) for im, r in zip(ims, rows)]  # noqa: E731
    single = stage.map_rows(SimpleNamespace(process_index=0, num_processes=1), run, fn, 2)
    # Each of 2 processes takes indices k, k+2, ...; what each would send is kept, then "gathered" rank 1 first.
    sent = []
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda done: sent.append(done) or done)
    for k in range(2):
        stage.map_rows(SimpleNamespace(process_index=k, num_processes=2), run, fn, 2)
    assert [[i for i, _ in share] for share in sent] == [[0, 2, 4], [1, 3]]
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda done: sent[1] + sent[0])
    both = stage.map_rows(SimpleNamespace(process_index=0, num_processes=2), run, fn, 2)
    assert single == both == [(i, 10 + 7 * i) for i in range(5)]


def _one_line_error(cli, *args):
    code, _, err = cli("eval", *map(str, args))
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_bad_inputs_are_one_line_and_exit_2(tmp_path, cli):
    run = fake_run(tmp_path / "r", _solid(50))
    out = tmp_path / "eval"
    (tmp_path / "nomanifest").mkdir()
    assert "no manifest.json" in _one_line_error(cli, tmp_path / "nomanifest", "--out", out)
    assert "missing.pt: HPS checkpoint not found" in _one_line_error(
        cli, run, "--hps-checkpoint", tmp_path / "missing.pt", "--hps-version", "v2.1", "--out", out)
    assert "needs --hps-version" in _one_line_error(cli, run, "--hps-checkpoint", run / "prompts.jsonl", "--out", out)

    torch.save({"state_dict": {"module.visual.proj": torch.zeros(2, 2), "head.w": torch.zeros(1)}}, tmp_path / "bad.pt")
    err = _one_line_error(cli, run, "--hps-checkpoint", tmp_path / "bad.pt", "--hps-version", "v2.0", "--out", out)
    assert "0 of 686 ViT-H-14 keys match (1 unknown keys)" in err

    (tmp_path / "HPS_v2.1_compressed.pt").write_bytes(b"x")
    err = _one_line_error(cli, run, "--hps-checkpoint", tmp_path / "HPS_v2.1_compressed.pt", "--hps-version", "v2.0",
                          "--out", out)
    assert "is HPS v2.1 but --hps-version is v2.0" in err

    for version in ("v2.0", "v2.1"):
        old = tmp_path / f"old-{version}"
        old.mkdir()
        row = {"label": "sd15", "steps": 20, "guidance": 7.5, "metrics": {"hps": {"version": version}}}
        (old / "report.json").write_text(json.dumps({"rows": [row]}))
        write_manifest(old, stage="eval", config={})
    err = _one_line_error(cli, run, "--include-report", tmp_path / "old-v2.0", "--include-report", tmp_path / "old-v2.1",
                          "--out", out)
    assert "HPS v2.0 and v2.1 in one comparison" in err

    assert "--sweep-run needs --guidance-sweep" in _one_line_error(cli, run, "--sweep-run", run, "--out", out)
    err = _one_line_error(cli, run, "--guidance-sweep", "1,4", "--sweep-run", tmp_path / "nomanifest", "--out", out)
    assert "nomanifest: --sweep-run must be one of the run folders being evaluated" in err

    data = bytearray((run / "images" / "00002-s2.png").read_bytes())
    (run / "images" / "00002-s2.png").write_bytes(bytes(data[:-1]))  # one byte short: its manifest's size differs
    err = _one_line_error(cli, run, "--out", out)
    assert f"{run / 'images' / '00002-s2.png'}: {len(data) - 1} bytes, the manifest says {len(data)}" in err
    assert "the folder changed since it was sampled" in err
    (run / "images" / "00002-s2.png").write_bytes(bytes(data))
    (run / "images" / "00001-s1.png").unlink()
    assert f"{run / 'images' / '00001-s1.png'}: missing: the folder changed" in _one_line_error(cli, run, "--out", out)
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["files"]  # a folder sampled before manifests listed their files: the rows still find the gap
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert "2 images for 3 prompts" in _one_line_error(cli, run, "--out", out)


@pytest.mark.parametrize("out_at, flag", [("a", "sample-run"), ("a/eval", "sample-run"), (".", "sample-run"),
                                          ("ref/eval", "--mse-reference")])
def test_out_overlapping_an_input_is_refused_and_nothing_is_touched(tmp_path, cli, out_at, flag):
    runs = tmp_path / "runs"
    a, ref = fake_run(runs / "a", _solid(50)), fake_run(runs / "ref", _solid(60))
    before = {p.relative_to(runs): p.read_bytes() for p in sorted(runs.rglob("*")) if p.is_file()}
    out = runs / out_at
    err = _one_line_error(cli, a, "--mse-reference", ref, "--out", out)
    assert f"--out {out}" in err and f"the {flag} input" in err and "choose an --out outside every input" in err
    assert {p.relative_to(runs): p.read_bytes() for p in sorted(runs.rglob("*")) if p.is_file()} == before


def test_quality_plot_draws_fid_on_a_log_axis(tmp_path):
    """The teacher's 4-step toy FID (~7,500) beside ~400 elsewhere: FID-like panels are log, accuracies linear."""
    from snapdistill.evaluation.report import plot_quality_vs_steps

    def row(label, steps, calls, fid, exact):
        return {"label": label, "steps": steps, "guidance": 7.5, "unet_calls_per_image": calls,
                "metrics": {"toy": {"fid": fid, "exact": exact, "acc": exact}}}

    rows = [row("teacher", 16, 32, 497.0, 0.97), row("teacher", 4, 8, 7555.0, 0.37), row("progressive", 2, 2, 430, 0.95)]
    scales = plot_quality_vs_steps(rows, tmp_path / "q.png")
    assert scales == {"Judge acc": "linear", "Toy FID (log)": "log"}
    assert Image.open(tmp_path / "q.png").size[0] > 100
    assert plot_quality_vs_steps(rows[:1], tmp_path / "none.png") is False
