"""S where a user's GPU sees it: the SD 1.5 layout (random weights, no download), for `make bench` (`speed_sd15`).

On the toy world a UNet call is bound by per-op overhead; on the SD 1.5 layout it is bound by compute, and the
decoder costs about 2.5 UNet calls, so the small decoders matter there. Rows, 256 px, batch 1, fp32 on this CPU:

* `teacher16_cfg`: the teacher UNet at 16 DPM-Solver++ steps with CFG (one call of 2 rows a step), full decoder;
* `direct8`, `direct8_kl`, `direct8_tiny`: a guided 8-step student (the teacher's UNet with the guidance input,
  one row a step, its own trailing DDIM) with the full decoder and the `kl` and `tiny` small decoders (width 0.5);
* `bk_small8_tiny`: the bk-small layout at 8 calls with the tiny decoder.

The rows are timed in turn, the fastest of `rounds` each. While a row's call is timed, hooks clock each network
inside it (`network_clock`: the text encoder, every UNet call, the decode), so a row's `shares` are each network's
part of the very call that was measured, and `parts_over_measured` says how much of it the networks explain (the
rest is the scheduler and the pipeline's own work). Each network is also timed alone at the row's shapes
(`parts_s`, seconds a call): timed minutes apart, those drift with the machine (a first version took its shares
from them, and one row's came to 0.899 of its time), so they give a call's cost, not the shares. `variants` times
the S rows again with `--channels-last` and with `--compile`, each network alone too, so the README can say which
pays where.
"""

from __future__ import annotations

import contextlib
import time

import torch

SIZE = 256
STEPS_TEACHER, STEPS_STUDENT = 16, 8
GUIDANCE = 7.5
DECODER_WIDTH = 0.5
PROMPT = "a photograph of an astronaut riding a horse on the moon"
S_ROWS = ("teacher16_cfg", "direct8_tiny")


class Layout:
    """The networks of the rows, built once: the teacher pipeline's parts, the students' UNets, the decoders."""

    def __init__(self, base=None, size: int = SIZE, seed: int = 0):
        """`base`: the teacher pipeline (default: the SD 1.5 layout, random weights); `size`: the image side."""
        from snapdistill.distill.student import guided_student, student_scheduler
        from snapdistill.models.sd_configs import random_sd_pipeline
        from snapdistill.models.small_decoder import build_small
        from snapdistill.sampling.schedulers import make_scheduler

        base = random_sd_pipeline("sd15", seed=seed) if base is None else base
        self.base, self.size = base, size
        self.unets = {"teacher": base.unet.eval(), "student": guided_student(base.unet).eval(),
                      "bk_small": guided_student(base.unet, arch="bk-small").eval()}
        self.decoders = {"full": base.vae.eval(), "kl": build_small("kl", base.vae.config, DECODER_WIDTH).eval(),
                         "tiny": build_small("tiny", base.vae.config, DECODER_WIDTH).eval()}
        self.schedulers = {"teacher": make_scheduler("dpmsolver++", base.scheduler.config),
                           "student": student_scheduler(base.scheduler, steps=STEPS_STUDENT, prediction_type="epsilon")}

    # name -> (UNet, decoder, steps, scheduler); S's two rows first, timed back to back
    ROWS = {"teacher16_cfg": ("teacher", "full", STEPS_TEACHER, "teacher"),
            "direct8_tiny": ("student", "tiny", STEPS_STUDENT, "student"),
            "direct8": ("student", "full", STEPS_STUDENT, "student"),
            "direct8_kl": ("student", "kl", STEPS_STUDENT, "student"),
            "bk_small8_tiny": ("bk_small", "tiny", STEPS_STUDENT, "student")}

    def pipeline(self, row: str):
        from diffusers import StableDiffusionPipeline

        unet, decoder, _, scheduler = self.ROWS[row]
        parts = {**self.base.components, "unet": self.unets[unet], "vae": self.decoders[decoder],
                 "scheduler": self.schedulers[scheduler]}
        pipe = StableDiffusionPipeline(**parts, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def call(self, row: str, steps: int | None = None, pipe=None):
        """A call that renders the row's one image (`steps` overrides its steps: a short warm-up; `pipe`: the row's
        pipeline, when the caller holds it)."""
        from snapdistill.sampling.render import generate

        pipe = self.pipeline(row) if pipe is None else pipe
        n = steps or self.ROWS[row][2]
        return lambda: generate(pipe, [PROMPT], [0], steps=n, guidance=GUIDANCE, size=self.size)

    def part_calls(self, rows) -> dict:
        """Per network the rows use: a call running it once at the rows' shapes (batch 1; the CFG teacher's UNet
        takes 2 rows)."""
        from snapdistill.models.small_decoder import to_pixels
        from snapdistill.sampling.inspect import unet_inputs

        kw = dict(cross_attention_kwargs=None, added_cond_kwargs=None, return_dict=False)  # as the pipeline calls it
        latents = unet_inputs(self.base, 1, self.size)["sample"]
        length = self.base.tokenizer.model_max_length
        ids = self.base.tokenizer([PROMPT], padding="max_length", max_length=length, return_tensors="pt").input_ids
        out = {"text_encoder": lambda: self.base.text_encoder(ids)}
        for row in rows:
            unet, decoder, _, _ = self.ROWS[row]
            net = self.unets[unet]
            # the CFG teacher's call takes the negative prompt's row too; a student's, its guidance embedding
            x = unet_inputs(self.base, 2 if unet == "teacher" else 1, self.size, net)
            out[f"unet_{unet}"] = lambda net=net, x=x: net(**x, **kw)
            out[f"decoder_{decoder}"] = lambda vae=self.decoders[decoder]: to_pixels(vae, latents)
        return out

    def set_format(self, memory_format) -> None:
        for net in [*self.unets.values(), *self.decoders.values()]:
            net.to(memory_format=memory_format)

    def compile(self) -> None:
        """torch.compile every network as `sample --compile` does (`speed_up`), in place."""
        from snapdistill.sampling.speedups import compiled

        self.unets = {name: compiled(net) for name, net in self.unets.items()}
        for vae in self.decoders.values():
            vae.decoder = compiled(vae.decoder)


NETWORKS = ("text_encoder", "unet", "decoder")


@contextlib.contextmanager
def network_clock(pipe):
    """Yield {network: [calls, seconds]} that fills while `pipe` runs: forward hooks on the text encoder and the
    UNet (they see a compiled module's calls too), and the VAE's `decode`, which the pipeline calls by attribute,
    wrapped for the decoder. On the CPU a network's work is done when its call returns, so the clock needs no
    synchronisation (a CUDA pipeline would need it)."""
    spent = {name: [0, 0.0] for name in NETWORKS}
    started: list[float] = []

    def count(name: str, seconds: float) -> None:
        spent[name][0] += 1
        spent[name][1] += seconds

    handles = []
    for name in ("text_encoder", "unet"):
        net = getattr(pipe, name)
        handles.append(net.register_forward_pre_hook(lambda *_: started.append(time.perf_counter())))
        handles.append(net.register_forward_hook(lambda *_, name=name: count(name, time.perf_counter() - started.pop())))
    vae, decode = pipe.vae, pipe.vae.decode

    def timed_decode(*args, **kwargs):
        tick = time.perf_counter()
        try:
            return decode(*args, **kwargs)
        finally:
            count("decoder", time.perf_counter() - tick)

    vae.decode = timed_decode
    try:
        yield spent
    finally:
        for handle in handles:
            handle.remove()
        del vae.decode  # the class's method again


def row_profile(seconds: float, spent: dict) -> dict:
    """A row's measured seconds and each network's share of them, from `network_clock` in the same call."""
    return {"s_per_image": seconds, "calls": {k: calls for k, (calls, _) in spent.items()},
            "shares": {k: s / seconds for k, (_, s) in spent.items()},
            "parts_over_measured": sum(s for _, s in spent.values()) / seconds,
            "unet_s_per_call": spent["unet"][1] / max(spent["unet"][0], 1)}


def timed_rows(layout: Layout, rows, rounds: int, part_rounds: int) -> dict:
    """The rows timed in turn (after a 2-step warm-up each), the fastest of `rounds` each with its networks'
    clock, then each network alone: per row its seconds and profile, and the seconds per call of every network."""
    from snapdistill.sampling.inspect import fastest_runs, fastest_seconds

    pipes = {row: layout.pipeline(row) for row in rows}

    def clocked(row: str):
        render = layout.call(row, pipe=pipes[row])

        def call() -> dict:
            with network_clock(pipes[row]) as spent:
                render()
            return spent
        return call

    with torch.no_grad():
        for row in rows:  # first calls allocate and pick kernels (and compile): not timed
            layout.call(row, steps=2, pipe=pipes[row])()
        best = fastest_runs({row: clocked(row) for row in rows}, rounds, warmup=False)
        parts = fastest_seconds(layout.part_calls(rows), part_rounds)
    return {"rows": {row: row_profile(*best[row]) for row in rows}, "parts_s": parts}


def speed_sd15(rounds: int = 3, part_rounds: int = 3, variants: bool = True, layout: Layout | None = None,
               variant_rounds: int = 2) -> dict:
    """The `speed_sd15` section of bench.json (`layout`: another teacher than the SD 1.5 layout, for tests). The plain
    rows take the fastest of `rounds` (a round of the five is 100 s here), each variant's of `variant_rounds`."""
    started = time.perf_counter()
    layout = layout or Layout()
    plain = timed_rows(layout, list(Layout.ROWS), rounds, part_rounds)
    rows = plain["rows"]
    ref = rows["teacher16_cfg"]["s_per_image"]
    out = {"size": layout.size, "batch": 1, "dtype": "fp32", "device": "cpu", "threads": torch.get_num_threads(),
           "S": ref / rows["direct8_tiny"]["s_per_image"],
           "S_full_decoder": ref / rows["direct8"]["s_per_image"],
           "S_kl_decoder": ref / rows["direct8_kl"]["s_per_image"],
           "S_bk_small": ref / rows["bk_small8_tiny"]["s_per_image"],
           "rows": rows, "parts_s": plain["parts_s"]}
    if variants:
        found = {}
        layout.set_format(torch.channels_last)
        found["channels_last"] = timed_rows(layout, S_ROWS, variant_rounds, part_rounds)
        layout.set_format(torch.contiguous_format)
        layout.compile()
        found["compile"] = timed_rows(layout, S_ROWS, variant_rounds, part_rounds)
        out["variants"] = {name: {"S": v["rows"]["teacher16_cfg"]["s_per_image"] / v["rows"]["direct8_tiny"]["s_per_image"],
                                  **v} for name, v in found.items()}
        every = [rows, *(v["rows"] for v in found.values())]  # plain first
        # Each side at its fastest setting, as a user would sample it.
        out["S_fastest"] = (min(r["teacher16_cfg"]["s_per_image"] for r in every)
                            / min(r["direct8_tiny"]["s_per_image"] for r in every))
    out["bench_seconds"] = time.perf_counter() - started
    return out


def speed_sd15_fresh() -> dict:
    """`speed_sd15` in a fresh interpreter. Run in the bench's own process after the toy section had compiled the
    toy pipelines, the compiled SD 1.5 UNet ran slower than the plain one (1.98 s a call against 1.71 s), while in
    a fresh process it ran 1.4-1.5x faster (1.08-1.09 s against 1.36-1.63 s, twice): graphs and settings that
    torch.compile keeps per process carry from one section into the next."""
    from snapdistill.bench.rows import fresh_section

    return fresh_section("snapdistill.bench.speed_sd15")


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(speed_sd15(variants="--no-variants" not in sys.argv), indent=2, default=float))
