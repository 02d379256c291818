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

from snapdistill.bench.rows import DECODER_ROWS, DECODER_RUN, NOTES, REFERENCE, ROWS, model_path
from snapdistill.bench.speed import seconds_per_image, speed_figures, step_cost
from snapdistill.manifest import git_commit


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
    if config.get("mode") == "dmd":                      # one real-score call per generator sample (the fake score
        dmd = config["dmd"]                              # is trained, not frozen: `fake_rows_per_sample`)
        return 1.0 if teacher_takes_w or dmd["real_guidance"] == 1 else 2.0
    n, m = config["from_steps"], config["to_steps"]
    # The landing's substeps as each round resolved them (runs before `landings` recorded only the flag).
    substeps = config["landings"][-1]["teacher_substeps"] if config.get("landings") else config.get("teacher_substeps", 1)
    calls = n // m * substeps                            # progressive rounds each halve: n // m = 2
    if config["mode"] == "progressive":
        calls = 2 * substeps
    if not teacher_takes_w and not config.get("embed_guidance"):
        rows_per_call = 1.0 + config.get("cfg_prob", 0.0)  # CFG only on the CFG-aware share of batches
    return calls * rows_per_call


def fake_rows(config: dict) -> dict:
    """A dmd run's trained-network UNet rows per generator sample: the fake score's call in the generator gradient,
    then per fake update one forward and backward of it; the generator's draws, each M calls for an M-step generator
    (M − 1 simulated steps without gradient: every step of the grid is drawn in a batch of 16), one draw per fake
    update. The GAN term adds one fake-network call in the generator's term and one on real latents per update."""
    if config.get("mode") != "dmd":
        return {}
    k, m = config["dmd"]["fake_updates"], config.get("to_steps") or 1
    gan = 1 + k if config["dmd"].get("gan_weight", 0) > 0 else 0
    return {"fake_rows_per_sample": 1 + k + gan, "generator_rows_per_sample": k * m}


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
                          **fake_rows(m["config"]),
                          "lr": m["config"]["common"]["train"]["lr"]})
        if teacher.name != "student":
            break
        folder = teacher.parent
    return stages


def sample_row(name: str, model: str, steps, guidance: float, scheduler, prompts, out: Path,
               decoder: Path | None = None) -> dict:
    """Render the row's images (reused when already there); return its sample manifest."""
    from snapdistill.sampling import stage as sample

    config = sample.SampleConfig(model=model, out=out / name, steps=steps, guidance=guidance, scheduler=scheduler,
                                 batch_size=64, source={"toy_val": len(prompts)}, overwrite=True, decoder=decoder)
    return json.loads(sample.run(config, prompts).read_text())


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
        path = model_path(runs, model)
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
            rows[name]["train_seconds"] = round(sum(stage["train_seconds"] for stage in rows[name]["training"]), 1)
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


def best_students(rows: dict, steps: tuple[int, ...] = (1, 2)) -> dict:
    """Per step count: the trained row (a student: it has a training budget) with the lowest toy FID at that many
    steps, its ratio to the reference, judge exact, and the training samples and seconds behind it."""
    out = {}
    for n in steps:
        found = [(r["fid"], name) for name, r in rows.items() if r.get("steps") == n and "training" in r]
        if found and REFERENCE in rows:
            name = min(found)[1]
            out[n] = {"row": name, **_route_figures(rows, name)}
    return out


def _route_figures(rows: dict, name: str) -> dict:
    r = rows[name]
    return {"ratio": r["fid"] / rows[REFERENCE]["fid"], "exact": r["exact"],
            "exact_vs_reference": r["exact"] - rows[REFERENCE]["exact"], "train_samples": r["train_samples"],
            "teacher_rows_per_sample": r["training"][-1]["teacher_rows_per_sample"],
            "train_seconds": r["train_seconds"]}


ROUTE_STEPS = (1, 2, 4, 8)  # the README's route table


def routes_at(rows: dict, steps: tuple[int, ...] = ROUTE_STEPS) -> dict:
    """Per step count, every trained row at that many steps, best first: its figures beside its training budget
    (samples and seconds over every stage behind it; the teacher's UNet rows per sample of its last stage)."""
    out = {}
    for n in steps:
        found = sorted((r["fid"], name) for name, r in rows.items() if r.get("steps") == n and "training" in r)
        if found and REFERENCE in rows:
            out[str(n)] = {name: _route_figures(rows, name) for _, name in found}
    return out


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
    out.update({"Q2_progressive": _ratio(rows, "progressive2", ref), "Q1_progressive": _ratio(rows, "progressive1", ref),
                "B2": _ratio(rows, "teacher2_cfg", ref), "B1": _ratio(rows, "teacher1_cfg", ref),
                "Q1_dmd": _ratio(rows, "dmd1", ref), "Q2_dmd": _ratio(rows, "dmd2", ref),
                "Q4_dmd": _ratio(rows, "dmd4", ref)})
    for steps, best in best_students(rows).items():
        out[f"Q{steps}"] = best["ratio"]
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
    from snapdistill.distill.decoder_loss import psnr_db
    from snapdistill.models.decoder import load_decoder
    from snapdistill.models.encoding import encode_latents
    from snapdistill.models.small_decoder import decoder_parameters, to_pixels
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
    for name, best in result.get("best_students", {}).items():
        console.print(f"[bold]{name}[/bold]: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                         for k, v in best.items()))
    for n, found in result.get("routes", {}).items():
        for name, f in found.items():
            console.print(f"[bold]{n}-step route {name}[/bold]: ratio {f['ratio']:.3f}, exact {f['exact']:.3f}, "
                          f"{f['train_samples']:,} samples, {f['teacher_rows_per_sample']:g} teacher rows/sample, "
                          f"{f['train_seconds']:.0f} s")
    for section in ("judge", "ratios", "decoder", "speed", "distill_step", "data"):
        if section in result:
            console.print(f"[bold]{section}[/bold]: " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result[section].items()
                if not isinstance(v, dict)))
    for row, r in result.get("speed_sd15", {}).get("rows", {}).items():
        console.print(f"[bold]sd15 {row}[/bold]: {r['s_per_image']:.2f} s/img, parts/measured "
                      f"{r['parts_over_measured']:.3f}, " + ", ".join(f"{k} {v:.1%}" for k, v in r["shares"].items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the toy-world figures; write bench.json.")
    parser.add_argument("--out", default="bench.json")
    parser.add_argument("--runs", default="runs/toy", help="where `make reproduce` left its runs")
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--skip-data", action="store_true")
    parser.add_argument("--skip-sd15", action="store_true", help="leave out the SD 1.5 layout's timings (minutes)")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    result = {"version": 1, "commit": git_commit(),
              "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "device": "cpu",
                          "python": platform.python_version()}}
    result["toy"] = toy_rows(runs, runs / "bench", args.prompts)
    result["judge"] = judge_figures()
    result["ratios"] = ratios(result["toy"])
    result["best_students"] = {f"Q{n}": best for n, best in best_students(result["toy"]).items()}
    result["routes"] = routes_at(result["toy"])
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
    if not args.skip_sd15:
        from snapdistill.bench.speed_sd15 import speed_sd15_fresh

        result["speed_sd15"] = sd15 = speed_sd15_fresh()
        result["ratios"].update(S_sd15=sd15["S"], S_sd15_bk_small=sd15["S_bk_small"])
    cost = step_cost(runs)
    if cost:
        result["distill_step"] = cost
        result["ratios"]["T"] = cost["T"]
    if not args.skip_data:
        from snapdistill.bench.data import bench_data_fresh

        result["data"] = bench_data_fresh(runs / "bench-data")
    Path(args.out).write_text(json.dumps(result, indent=2, default=float) + "\n")
    print_table(result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
