"""The bench's timings: seconds per image of a row, S (the reference over the 8-step student, timed in turn) and
T (one distillation step over its parts timed alone)."""

from __future__ import annotations

from pathlib import Path

import torch

from snapdistill.bench.rows import DECODER_ROWS, DECODER_RUN, REFERENCE, ROWS, model_path


def generate_batch(model: str, steps, guidance: float, scheduler, batch: int = 16, decoder: Path | None = None,
                   **speedups):
    """(a call that renders one batch of `batch` toy val prompts, model loaded; UNet parameters). `speedups`:
    `channels_last`, `compile`, as `sample` takes them."""
    from snapdistill.models.loading import load_pipeline, resolve_model
    from snapdistill.sampling import render
    from snapdistill.sampling.config import SampleConfig
    from snapdistill.sampling.speedups import speed_up
    from snapdistill.sampling.stage import use_decoder
    from snapdistill.toy.world import toy_val_prompts

    resolved = resolve_model(model)
    pipe = load_pipeline(resolved)
    settings, pipe.scheduler = render.resolve_settings(
        SampleConfig(model=model, out=Path("."), steps=steps, guidance=guidance, scheduler=scheduler),
        pipe, resolved.path)
    use_decoder(pipe, resolved.path, decoder)
    speed_up(pipe, **speedups)
    prompts, seeds = toy_val_prompts(batch), list(range(batch))
    kw = dict(steps=settings["steps"], guidance=guidance, size=settings["size"])
    return (lambda: render.generate(pipe, prompts, seeds, **kw)), sum(p.numel() for p in pipe.unet.parameters())


def seconds_per_image(model: str, steps, guidance: float, scheduler, batch: int = 16,
                      repeats: int = 7, decoder: Path | None = None) -> tuple[float, int]:
    """(wall-clock per image at batch 16, model loaded and warmed up; UNet parameters). The fastest of `repeats`
    timed batches: other activity on the machine only ever adds time (timeit's reasoning), and the median of 3
    moved the same weights' time by 30% between two rows of one run (12.6 and 9.6 ms per image)."""
    from snapdistill.sampling.inspect import repeated_seconds

    generate, params = generate_batch(model, steps, guidance, scheduler, batch, decoder)
    return min(repeated_seconds(generate, repeats)) / batch, params


VARIANTS = {"channels_last": {"channels_last": True}, "compile": {"compile": True}}  # timed after the plain pair


def speed_figures(runs: Path, batch: int = 16, repeats: int = 7, variants: bool = True) -> dict:
    """S (and S with the small decoder): the reference row's seconds per image over the 8-step student's, the
    pipelines loaded together and timed in turn, the fastest of `repeats` batches each. Rows timed one after the
    other gave the same weights S = 3.35 in one run and 2.57 in the next (the teacher at 30.7 and 22.3 ms per
    image), and 2.46 and 2.70 in two fresh processes; timed in turn, three processes gave 2.58, 2.63 and 2.60.

    `variants`: the reference and the student again with `sample --channels-last` and `--compile` (each pair
    timed in turn); `S_fastest` is the reference's fastest variant over the student's, and `student_ops` the ops
    that bound the plain student's batch (`op_profile`)."""
    from snapdistill.sampling.inspect import fastest_seconds

    if model_path(runs, "direct8") is None:
        return {}
    decoder = runs / DECODER_RUN / "decoder" if (runs / DECODER_RUN / "manifest.json").is_file() else None
    specs = {REFERENCE: (*ROWS[REFERENCE], None), "direct8": (*ROWS["direct8"], None)}
    if decoder is not None:
        specs["direct8_smalldec"] = (*DECODER_ROWS["direct8_smalldec"][:4], decoder)
    calls = {name: generate_batch(model_path(runs, model), steps, guidance, scheduler, batch, small)[0]
             for name, (model, steps, guidance, scheduler, small) in specs.items()}
    seconds = {name: value / batch for name, value in fastest_seconds(calls, repeats).items()}
    out = {f"{name}_s_per_image": value for name, value in seconds.items()}
    out["S"] = seconds[REFERENCE] / seconds["direct8"]
    if decoder is not None:
        out["S_smalldec"] = seconds[REFERENCE] / seconds["direct8_smalldec"]
    if not variants:
        return out
    out["student_ops"] = op_profile(calls["direct8"])
    found = {"plain": {name: seconds[name] for name in (REFERENCE, "direct8")}}
    for variant, flags in VARIANTS.items():
        pair = {name: generate_batch(model_path(runs, specs[name][0]), *specs[name][1:4], batch, None, **flags)[0]
                for name in (REFERENCE, "direct8")}
        found[variant] = {name: value / batch for name, value in fastest_seconds(pair, repeats).items()}
    out["variants"] = {variant: {**{f"{k}_s_per_image": v for k, v in times.items()},
                                 "S": times[REFERENCE] / times["direct8"]} for variant, times in found.items()}
    out["S_fastest"] = min(t[REFERENCE] for t in found.values()) / min(t["direct8"] for t in found.values())
    return out


def op_profile(fn, top: int = 6) -> dict:
    """The ops taking most of one call of `fn` (after a warm-up), by their own CPU time as a share of the call's
    wall-clock time (torch.profiler), with the share of every op together (the rest is Python and the pipeline)."""
    import time

    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tick = time.perf_counter()
        fn()
        wall = time.perf_counter() - tick
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    return {"wall_s": wall, "all_ops_share": total / wall,
            "top": {e.key: {"share": e.self_cpu_time_total / 1e6 / wall, "calls": e.count} for e in events[:top]}}


def step_cost(runs: Path, batch: int = 32, repeats: int = 5) -> dict | None:
    """T: one distillation step (16->8, guided route) over its parts timed alone."""
    from snapdistill.diffusion import DiffusionModel
    from snapdistill.distill.guided import Guided, StudentKind
    from snapdistill.distill.losses import Batch
    from snapdistill.distill.steps_config import DENOISER_TEACHER_LANDING
    from snapdistill.distill.steps_stage import round_loss
    from snapdistill.distill.student import copy_student
    from snapdistill.models.encoding import TextEmbeddings
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
    lands = DENOISER_TEACHER_LANDING  # a stage-1 teacher's landing, as distill-steps resolves it for direct8
    loss = round_loss(Guided(teacher, w_dim), student_kind, pipe.scheduler.config, 16, 8, lands.teacher_substeps,
                      solver=lands.teacher_solver, space=lands.target_space)
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
