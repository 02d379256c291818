"""`make bench`: the toy-world figures, the distillation step cost and the data throughput.

Every image figure uses the same toy val prompts and seeds; each figure is measured in this run, beside
its baseline, and written to bench.json (see BENCH.md for the keys). A section whose inputs are not
built is left out, never filled with a placeholder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from snapdistill.manifest import git_commit

# name -> (model: "toy" or a run folder under runs/toy, steps (None: the student's own), guidance, scheduler)
ROWS = {
    "teacher16_cfg": ("toy", 16, 7.5, None),
    "teacher16_nocfg": ("toy", 16, 1.0, None),
    "teacher8_cfg": ("toy", 8, 7.5, None),
    "teacher20_cfg": ("toy", 20, 7.5, None),
    "teacher4_cfg": ("toy", 4, 7.5, None),
    "guided8_dpm": ("guided", 8, 7.5, "dpmsolver++"),
    "guided16": ("guided", 16, 7.5, "dpmsolver++"),
    "direct8": ("direct8", None, 7.5, None),
    "direct4": ("direct4", None, 7.5, None),
    # With a guided (stage-1) teacher, one progressive round 16->8 is the direct loss: the same training, so the
    # row samples direct8's student (see NOTES); progressive4 continues from it with one 8->4 round.
    "progressive8": ("direct8", None, 7.5, None),
    "progressive4": ("progressive4", None, 7.5, None),
    "direct8_base": ("direct8-base", None, 7.5, None),
    # Block-removed 16->8 students (BK-SDM), one per --student-arch.
    "arch_bk_base8": ("arch-bk-base8", None, 7.5, None),
    "arch_bk_small8": ("arch-bk-small8", None, 7.5, None),
    "arch_bk_tiny8": ("arch-bk-tiny8", None, 7.5, None),
    # Latent consistency students, each one run sampled by its LCMScheduler at 2, 4 and 8 steps: from the stage-1
    # student, and from the base teacher on the budget of both stages.
    "consistency2": ("consistency", 2, 7.5, None),
    "consistency4": ("consistency", 4, 7.5, None),
    "consistency8": ("consistency", 8, 7.5, None),
    "consistency_base4": ("consistency-base", 4, 7.5, None),
    "consistency_base8": ("consistency-base", 8, 7.5, None),
}
# Rows decoded by the small decoder of the `decoder` run (distill-decoder), beside the same model's own rows.
DECODER_ROWS = {
    "direct8_smalldec": ("direct8", None, 7.5, None, "direct8"),
    "teacher16_smalldec": ("toy", 16, 7.5, None, "teacher16_cfg"),
}
DECODER_RUN = "decoder"
REFERENCE = "teacher16_cfg"
NOTES = {
    "progressive8": "the direct8 student: with a teacher that takes w, progressive 16->8 (one round) is the direct "
                    "loss, so the two routes are one training",
    "direct8_base": "SnapFusion's route from the base teacher: unguided student, CFG at sampling (2 UNet rows/step)",
}


def teacher_rows(stage: str, config: dict, teacher_takes_w: bool) -> float | None:
    """Frozen-network UNet rows per training sample per optimisation step (a CFG call counts 2, the consistency
    target network 1), from a run's recorded config; None for a stage this does not know.

    `teacher_takes_w`: the teacher is a student folder (a w-conditioned student: one row per guided call)."""
    rows_per_call = 1.0 if teacher_takes_w else 2.0   # a base teacher runs CFG on [uncond; cond]
    if stage == "distill-guidance":
        return 2.0
    if stage != "distill-steps":
        return None
    if config.get("mode") == "consistency":
        return rows_per_call + 1.0                       # one solver step of the teacher, one target call
    n, m = config["from_steps"], config["to_steps"]
    calls = n // m * config.get("teacher_substeps", 1)   # progressive rounds each halve: n // m = 2
    if config["mode"] == "progressive":
        calls = 2 * config.get("teacher_substeps", 1)
    if not teacher_takes_w and not config.get("embed_guidance"):
        rows_per_call = 1.0 + config.get("cfg_prob", 0.0)  # CFG only on the CFG-aware share of batches
    return calls * rows_per_call


def training_budget(student: str) -> list[dict]:
    """Every training stage behind a student folder, first stage first: run, steps, samples, seconds.

    Follows each run's teacher input while it is another run's `student/` (stage 2 -> stage 1)."""
    stages, folder = [], Path(student).parent
    while (folder / "manifest.json").is_file():
        m = json.loads((folder / "manifest.json").read_text())
        teacher = Path(m["inputs"][0]["path"])
        steps = m["counts"]["steps"]
        stages.insert(0, {"run": folder.name, "stage": m["stage"], "steps": steps,
                          "samples": m["counts"]["samples"], "train_seconds": round(m["metrics"]["train_seconds"], 1),
                          "seconds_per_step": round(m["metrics"]["train_seconds"] / max(steps, 1), 3),
                          "teacher_rows_per_sample": teacher_rows(m["stage"], m["config"], teacher.name == "student"),
                          "lr": m["config"]["common"]["train"]["lr"]})
        if teacher.name != "student":
            break
        folder = teacher.parent
    return stages


def _model_path(runs: Path, model: str) -> str | None:
    """The model to sample: the toy teacher, or a finished run's student (None when not built)."""
    if model == "toy":
        return "toy"
    folder = runs / model
    return str(folder / "student") if (folder / "manifest.json").is_file() else None


def sample_row(name: str, model: str, steps, guidance: float, scheduler, prompts, out: Path,
               decoder: Path | None = None) -> dict:
    """Render the row's images (reused when already there); return its sample manifest."""
    from snapdistill.sampling import stage as sample

    config = sample.SampleConfig(model=model, out=out / name, steps=steps, guidance=guidance, scheduler=scheduler,
                                 batch_size=64, source={"toy_val": len(prompts)}, overwrite=True, decoder=decoder)
    return json.loads(sample.run(config, prompts).read_text())


def _generate_batch(model: str, steps, guidance: float, scheduler, batch: int = 16, decoder: Path | None = None):
    """(a call that renders one batch of `batch` toy val prompts, model loaded; UNet parameters)."""
    from snapdistill.models.loading import load_pipeline, resolve_model
    from snapdistill.sampling import render
    from snapdistill.sampling.stage import SampleConfig, use_decoder
    from snapdistill.toy.world import toy_val_prompts

    resolved = resolve_model(model)
    pipe = load_pipeline(resolved)
    settings, pipe.scheduler = render.resolve_settings(
        SampleConfig(model=model, out=Path("."), steps=steps, guidance=guidance, scheduler=scheduler),
        pipe, resolved.path)
    use_decoder(pipe, resolved.path, decoder)
    prompts, seeds = toy_val_prompts(batch), list(range(batch))
    kw = dict(steps=settings["steps"], guidance=guidance, size=settings["size"])
    return (lambda: render.generate(pipe, prompts, seeds, **kw)), sum(p.numel() for p in pipe.unet.parameters())


def seconds_per_image(model: str, steps, guidance: float, scheduler, batch: int = 16,
                      repeats: int = 7, decoder: Path | None = None) -> tuple[float, int]:
    """(wall-clock per image at batch 16, model loaded and warmed up; UNet parameters). The fastest of `repeats`
    timed batches: other activity on the machine only ever adds time (timeit's reasoning), and the median of 3
    moved the same weights' time by 30% between two rows of one run (12.6 and 9.6 ms per image)."""
    from snapdistill.sampling.inspect import repeated_seconds

    generate, params = _generate_batch(model, steps, guidance, scheduler, batch, decoder)
    return min(repeated_seconds(generate, repeats)) / batch, params


def speed_figures(runs: Path, batch: int = 16, repeats: int = 7) -> dict:
    """S (and S with the small decoder): the reference row's seconds per image over the 8-step student's, the
    pipelines loaded together and timed in turn, the fastest of `repeats` batches each. Rows timed one after the
    other gave the same weights S = 3.35 in one run and 2.57 in the next (the teacher at 30.7 and 22.3 ms per
    image), and 2.46 and 2.70 in two fresh processes; timed in turn, three processes gave 2.58, 2.63 and 2.60."""
    from snapdistill.sampling.inspect import fastest_seconds

    if _model_path(runs, "direct8") is None:
        return {}
    decoder = runs / DECODER_RUN / "decoder" if (runs / DECODER_RUN / "manifest.json").is_file() else None
    specs = {REFERENCE: (*ROWS[REFERENCE], None), "direct8": (*ROWS["direct8"], None)}
    if decoder is not None:
        specs["direct8_smalldec"] = (*DECODER_ROWS["direct8_smalldec"][:4], decoder)
    calls = {name: _generate_batch(_model_path(runs, model), steps, guidance, scheduler, batch, small)[0]
             for name, (model, steps, guidance, scheduler, small) in specs.items()}
    seconds = {name: value / batch for name, value in fastest_seconds(calls, repeats).items()}
    out = {f"{name}_s_per_image": value for name, value in seconds.items()}
    out["S"] = seconds[REFERENCE] / seconds["direct8"]
    if decoder is not None:
        out["S_smalldec"] = seconds[REFERENCE] / seconds["direct8_smalldec"]
    return out


def toy_rows(runs: Path, out: Path, n_prompts: int) -> dict:
    """Every buildable row: judge accuracy, toy FID, same-noise MSE vs teacher16_cfg, cost."""
    from snapdistill.metrics import image_paths, open_images, read_rows
    from snapdistill.metrics.toy import (
        image_mse,
        judge_per_image,
        load_toy_judge,
        real_toy_features,
        toy_summary,
    )
    from snapdistill.sampling.prompts import collect_prompts

    prompts = collect_prompts(toy_val=n_prompts)
    judge = load_toy_judge()
    real = real_toy_features(judge)
    rows = {}
    decoder = runs / DECODER_RUN / "decoder" if (runs / DECODER_RUN / "manifest.json").is_file() else None
    table = {**{k: (*v, None) for k, v in ROWS.items()},
             **({k: (*v[:4], decoder) for k, v in DECODER_ROWS.items()} if decoder else {})}
    measured: dict[tuple, str] = {}  # a row's spec -> the first row measured with it
    for name, (model, steps, guidance, scheduler, small) in table.items():
        path = _model_path(runs, model)
        if path is None:
            continue
        spec = (model, steps, guidance, scheduler, small)
        if spec in measured:  # the same model and settings (progressive8 is direct8): its figures, not a resample
            rows[name] = {**rows[measured[spec]], **({"note": NOTES[name]} if name in NOTES else {})}
            continue
        measured[spec] = name
        manifest = sample_row(name, path, steps, guidance, scheduler, prompts, out, decoder=small)
        folder = out / name
        listed = read_rows(folder)
        per_image = []
        for lo in range(0, len(listed), 256):
            chunk = listed[lo : lo + 256]
            per_image += judge_per_image(judge, open_images(image_paths(folder, chunk)), [r["prompt"] for r in chunk])
        summary = toy_summary(per_image, real)
        ref = out / REFERENCE
        mse = image_mse(image_paths(folder, listed), image_paths(ref, read_rows(ref)))
        s_img, params = seconds_per_image(path, steps, guidance, scheduler, decoder=small)
        rows[name] = {
            "steps": manifest["config"]["steps"], "guidance": guidance,
            "fid": summary["fid"], "acc": summary["acc"], "exact": summary["exact"],
            "mse_vs_ref": float(mse.mean()), "s_per_image": s_img,
            "unet_calls": manifest["metrics"]["unet_calls_per_image"], "params": params,
            "n": summary["n"],
        }
        if model != "toy":
            rows[name]["training"] = training_budget(path)
            rows[name]["train_samples"] = sum(stage["samples"] for stage in rows[name]["training"])
        if name in NOTES:
            rows[name]["note"] = NOTES[name]
        print(f"{name:>16}: fid {summary['fid']:.2f} acc {summary['acc']:.3f} exact {summary['exact']:.3f} "
              f"mse {float(mse.mean()):.5f} {s_img * 1000:.1f} ms/img", flush=True)
    return rows


def judge_figures(n: int = 1024) -> dict:
    """The judge's exact accuracy on real toy val images and on their toy-VAE reconstructions."""
    from snapdistill.metrics.toy import load_toy_judge
    from snapdistill.toy.judge import judge_images, toy_tensors
    from snapdistill.toy.paths import load_toy_teacher
    from snapdistill.toy.vae import decode, encode_mean

    judge = load_toy_judge()
    x, captions = toy_tensors("val", n)
    vae = load_toy_teacher().vae
    with torch.no_grad():
        recon = decode(vae, encode_mean(vae, x)).clamp(-1, 1)
    return {"exact_real_val": judge_images(judge, x, captions)["exact"],
            "exact_vae_recon": judge_images(judge, recon, captions)["exact"]}


def _ratio(rows: dict, a: str, b: str, key: str = "fid") -> float | None:
    if a in rows and b in rows and rows[a][key] and rows[b][key]:
        return rows[a][key] / rows[b][key]
    return None


def ratios(rows: dict) -> dict:
    """The figures of BENCH.md, from the rows that exist."""
    ref = REFERENCE
    out = {
        "G": _ratio(rows, "guided16", ref), "Q8": _ratio(rows, "direct8", ref), "B8": _ratio(rows, "teacher8_cfg", ref),
        "P8": _ratio(rows, "progressive8", ref), "Q4_direct": _ratio(rows, "direct4", ref),
        "Q4_progressive": _ratio(rows, "progressive4", ref), "B4": _ratio(rows, "teacher4_cfg", ref),
        "Q8_base_route": _ratio(rows, "direct8_base", ref),
        "Q4_consistency": _ratio(rows, "consistency4", ref), "Q8_consistency": _ratio(rows, "consistency8", ref),
        "Q4_consistency_base": _ratio(rows, "consistency_base4", ref),
        "Q8_consistency_base": _ratio(rows, "consistency_base8", ref),
    }
    baselines = [k for k in ("teacher8_cfg", "guided8_dpm") if k in rows]
    if baselines and ref in rows:
        out["D8"] = min(rows[k]["fid"] for k in baselines) / rows[ref]["fid"]
        if "direct8" in rows:  # the 8-step student against every training-free 8-step baseline, on each figure
            d8 = rows["direct8"]
            out["Q8_beats_D8"] = float(all(d8["fid"] < rows[k]["fid"] and d8["exact"] > rows[k]["exact"]
                                           and d8["mse_vs_ref"] < rows[k]["mse_vs_ref"] for k in baselines))
    if "direct4" in rows and "teacher8_cfg" in rows:
        out["Q4_beats_B8"] = float(rows["direct4"]["fid"] < rows["teacher8_cfg"]["fid"])
    return {k: v for k, v in out.items() if v is not None}


@torch.no_grad()
def decoder_figures(runs: Path, rows: dict, n: int = 1024, batch: int = 16) -> dict:
    """The small decoder against the teacher's: parameters, decode speed (batch 16, warmed up, the two decoders
    timed in turn, the fastest of 25 each), PSNR on the teacher encoder's latents of `n` toy val images, and the
    whole pipeline's toy FID and exact accuracy."""
    from snapdistill.distill.data import encode_latents
    from snapdistill.distill.small_decoder import decoder_parameters, psnr_db, to_pixels
    from snapdistill.models.decoder import load_decoder
    from snapdistill.sampling.inspect import fastest_seconds
    from snapdistill.toy.judge import toy_tensors
    from snapdistill.toy.paths import load_toy_teacher

    if not (runs / DECODER_RUN / "manifest.json").is_file():
        return {}
    teacher = load_toy_teacher().vae.eval()
    small, _ = load_decoder(runs / DECODER_RUN / "decoder")
    x, _ = toy_tensors("val", n)
    z = torch.cat([encode_latents(teacher, part) for part in x.split(256)])
    psnr = torch.cat([psnr_db(to_pixels(small, part), to_pixels(teacher, part)) for part in z.split(256)])
    speed = {name: seconds / batch for name, seconds in fastest_seconds(
        {name: (lambda vae=vae: to_pixels(vae, z[:batch])) for name, vae in (("teacher", teacher), ("small", small))},
        repeats=25).items()}
    out = {"decoder_params": decoder_parameters(small) / decoder_parameters(teacher),
           "decoder_speedup": speed["teacher"] / speed["small"], "decoder_psnr_db": float(psnr.mean()),
           "decoder_s_per_image": speed["small"], "teacher_decoder_s_per_image": speed["teacher"]}
    for name, (_, _, _, _, own) in DECODER_ROWS.items():
        if name in rows and own in rows:
            out[f"{name}_fid_ratio"] = rows[name]["fid"] / rows[own]["fid"]
            out[f"{name}_exact_diff"] = rows[name]["exact"] - rows[own]["exact"]
    return out


def arch_figures(rows: dict) -> dict:
    """Per 8-step student (direct8 is the `same` arch): UNet parameters, speed and toy FID against the teacher."""
    ref = rows.get(REFERENCE)
    if ref is None:
        return {}
    out = {}
    for name in ("direct8", "arch_bk_base8", "arch_bk_small8", "arch_bk_tiny8"):
        if name in rows:
            r = rows[name]
            out[name] = {"param_ratio": r["params"] / ref["params"], "speed_ratio": ref["s_per_image"] / r["s_per_image"],
                         "fid_ratio": r["fid"] / ref["fid"], "acc": r["acc"], "exact": r["exact"]}
    return out


def step_cost(runs: Path, batch: int = 32, repeats: int = 5) -> dict | None:
    """T: one distillation step (16->8, guided route) over its parts timed alone."""
    from snapdistill.diffusion import DiffusionModel
    from snapdistill.distill.data import TextEmbeddings
    from snapdistill.distill.guided import Guided, StudentKind
    from snapdistill.distill.losses import Batch
    from snapdistill.distill.steps_stage import StepsConfig, round_loss
    from snapdistill.distill.student import copy_student
    from snapdistill.models.loading import load_pipeline, resolve_model
    from snapdistill.sampling.inspect import median_seconds
    from snapdistill.toy.world import toy_val_prompts

    folder = runs / "guided" / "student"
    if not (runs / "guided" / "manifest.json").is_file():
        return None
    pipe = load_pipeline(resolve_model(str(folder)))
    teacher = DiffusionModel.from_pipeline(pipe)
    w_dim = pipe.unet.config.time_cond_proj_dim
    student_unet = copy_student(pipe.unet).train()
    student_kind = StudentKind(teacher.prediction_type, w_dim)
    student = student_kind.on(student_unet, teacher.schedule)
    optimizer = torch.optim.AdamW(student_unet.parameters(), lr=1e-6)
    loss = round_loss(Guided(teacher, w_dim), student_kind, pipe.scheduler.config, 16, 8,
                      StepsConfig.teacher_substeps, solver=StepsConfig.teacher_solver)
    text = TextEmbeddings(pipe.tokenizer, pipe.text_encoder)
    lat = 2 * torch.randn(batch, 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    data = Batch(latents=lat, cond=text(toy_val_prompts(batch)), uncond=text([""]))
    t = torch.full((batch,), 874)
    s = torch.full((batch,), 7.5)

    def timed(fn) -> float:
        return median_seconds(fn, repeats)

    def full_step():
        value = loss(student_unet, data, torch.Generator().manual_seed(0)).mean()
        value.backward()
        optimizer.step()
        optimizer.zero_grad()

    def teacher_part():
        loss.teacher_landing(lat, t, torch.full((batch,), 749), data, s)

    def student_part():
        student(lat, t, data.cond, data.uncond, s).x0.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    whole, parts = timed(full_step), timed(teacher_part) + timed(student_part)
    return {"step_s": whole, "parts_s": parts, "T": whole / parts}


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = result.get("toy", {})
    table = Table(title="snapdistill bench (toy world)")
    for col in ("row", "steps", "guidance", "fid", "acc", "exact", "mse_vs_ref", "ms/img", "unet_calls", "params"):
        table.add_column(col, justify="right")
    for name, r in rows.items():
        table.add_row(name, str(r["steps"]), f"{r['guidance']:g}", f"{r['fid']:.2f}", f"{r['acc']:.3f}",
                      f"{r['exact']:.3f}", f"{r['mse_vs_ref']:.5f}", f"{r['s_per_image'] * 1000:.1f}",
                      f"{r['unet_calls']:g}", f"{r['params']:,}")
    console = Console()
    console.print(table)
    for name, r in result.get("arch", {}).items():
        console.print(f"[bold]arch {name}[/bold]: " + ", ".join(f"{k}={v:.4g}" for k, v in r.items()))
    for section in ("judge", "ratios", "decoder", "speed", "distill_step", "data"):
        if section in result:
            console.print(f"[bold]{section}[/bold]: " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result[section].items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the toy-world figures; write bench.json.")
    parser.add_argument("--out", default="bench.json")
    parser.add_argument("--runs", default="runs/toy", help="where `make reproduce` left its runs")
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--skip-data", action="store_true")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    result = {"version": 1, "commit": git_commit(),
              "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "device": "cpu",
                          "python": platform.python_version()}}
    result["toy"] = toy_rows(runs, runs / "bench", args.prompts)
    result["judge"] = judge_figures()
    result["ratios"] = ratios(result["toy"])
    if arch := arch_figures(result["toy"]):
        result["arch"] = arch
    if small := decoder_figures(runs, result["toy"]):
        result["decoder"] = small
        result["ratios"].update({k: small[k] for k in ("decoder_params", "decoder_speedup", "decoder_psnr_db")})
        if "direct8_smalldec_fid_ratio" in small:
            result["ratios"]["decoder_fid"] = small["direct8_smalldec_fid_ratio"]
    if speed := speed_figures(runs):
        result["speed"] = speed
        result["ratios"].update({k: speed[k] for k in ("S", "S_smalldec") if k in speed})
    cost = step_cost(runs)
    if cost:
        result["distill_step"] = cost
        result["ratios"]["T"] = cost["T"]
    if not args.skip_data:
        from snapdistill.bench.data import bench_data

        result["data"] = bench_data(runs / "bench-data")
    Path(args.out).write_text(json.dumps(result, indent=2, default=float) + "\n")
    print_table(result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
