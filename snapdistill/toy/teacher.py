"""The toy teacher: a `CLIPTextModel` and an epsilon `UNet2DConditionModel` trained jointly on toy latents.

The VAE (see `snapdistill.toy.vae`) is trained first and frozen; toy train images are encoded once
into 4x8x8 latents. The text encoder and UNet then learn SD's epsilon objective on SD's
scaled-linear schedule, with ~10% of captions dropped to "" so that classifier-free guidance
works (the pipeline encodes the negative prompt ""). Training is resumable: a checkpoint
(weights, EMA, optimiser, RNG state) is written atomically every few minutes, and a `--minutes`
budget stops a run that a later call continues. The exported pipeline uses the EMA weights.

Over 350 lines because one file holds the toy teacher's whole recipe (models, resumable training, export and
its measurement), which only `snapdistill toy teacher` uses.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from snapdistill.errors import SnapdistillError
from snapdistill.models.tiny import SD_SCHEDULER_CONFIG
from snapdistill.models.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer

# The sampler the shipped pipeline carries. The spacing is explicit and recorded (see DESIGN §3).
SAMPLER_CONFIG = {"algorithm_type": "dpmsolver++", "solver_order": 2, "timestep_spacing": "trailing"}

TEXT_CONFIG = {
    "vocab_size": CLIP_VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    # SD's layout in miniature: two pairs per down stage (three per up stage), a mid block, and an
    # innermost stage of plain residual blocks whose width equals the one above it, so that every
    # BK-SDM student (`--student-arch`, see snapdistill.distill.arch) can be derived from the teacher.
    # Cross-attention sits at 4x4 and in the mid block: at 8x8 it cost more than the rest of the UNet
    # on a CPU (measured fwd+bwd at batch 64: 0.18 s for this layout, 0.42 s with attention at 8x8).
    "layers_per_block": 2,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 64,
    "attention_head_dim": 4,
    "norm_num_groups": 16,
    # The pooled caption is also added to the timestep embedding (stock diffusers option): a global
    # conditioning path that the UNet picks up much sooner than cross-attention alone.
    "addition_embed_type": "text",
    "addition_embed_type_num_heads": 4,
}


@dataclass
class TeacherRecipe:
    seed: int = 0  # seeds init, data and noise
    steps: int = 8000  # length of the learning-rate schedule
    # Export the EMA at this step of the schedule. Trained on to the end, the conditional model gets so
    # sharp that guidance 7.5 over-shoots (an earlier layout at step 8000, 1,024 val prompts, 16 steps:
    # exact 0.49 at guidance 7.5 vs 0.99 at 1.0). At step 2,000 it behaves as SD does, guidance 7.5 is
    # needed: 0.97 vs 0.48 (shipped, 1,024 prompts; 256-prompt snapshots at 1,000 / 1,500 / 2,000 steps
    # gave 0.49 / 0.73 / 0.98 at 7.5).
    stop_step: int | None = 2000
    batch: int = 64  # latents per step
    lr: float = 2e-3  # AdamW peak rate (warmup, then cosine to lr_min_frac * lr)
    lr_min_frac: float = 0.05
    warmup: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999  # EMA of text encoder + UNet weights (exported)
    caption_dropout: float = 0.1  # fraction of captions replaced by "" (for CFG)
    n_train: int = 32768  # distinct train images, encoded once
    # Token embeddings start at unit scale, well above the position embeddings, so that from the first
    # step the encoder's outputs differ by caption (at CLIP's 0.02 they barely do, and the UNet then
    # learns to ignore the text and the text encoder gets no signal).
    token_init_std: float = 1.0
    freeze_token_embedding: bool = False  # True: the 49,408-row embedding stays at its seeded init
    checkpoint_minutes: float = 5.0
    unet: dict = field(default_factory=lambda: dict(UNET_CONFIG))
    text: dict = field(default_factory=lambda: dict(TEXT_CONFIG))
    sampler: dict = field(default_factory=lambda: dict(SAMPLER_CONFIG))


def build_models(recipe: TeacherRecipe):
    """Fresh (text encoder, UNet) for a recipe, seeded."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(recipe.seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**recipe.text))
    unet = UNet2DConditionModel(**recipe.unet)
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight.normal_(0.0, recipe.token_init_std)
    if recipe.freeze_token_embedding:
        text_encoder.get_input_embeddings().weight.requires_grad_(False)
    return text_encoder, unet


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids (N, 77) exactly as `StableDiffusionPipeline` makes them."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_dataset(vae, tokenizer, n: int, seed: int, log=print) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled latents (N, 4, 8, 8) and token ids (N, 77) of the first `n` toy train items."""
    from snapdistill.toy.judge import toy_tensors
    from snapdistill.toy.vae import encode_mean

    t0 = time.time()
    x, caps = toy_tensors("train", n, seed=seed)
    latents = encode_mean(vae, x) * vae.config.scaling_factor
    ids = tokenize(tokenizer, caps)
    log(f"encoded {n} train images in {time.time() - t0:.0f}s; latent std {latents.std():.3f}")
    return latents, ids


def _lr_at(step: int, r: TeacherRecipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    p = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.lr * (r.lr_min_frac + (1 - r.lr_min_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def _trajectory(recipe: dict) -> dict:
    return {k: v for k, v in recipe.items() if k != "stop_step"}


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_teacher(
    work: Path,  # run folder: checkpoint.pt, train.log
    vae,  # trained toy VAE (frozen)
    recipe: TeacherRecipe,
    *,
    minutes: float | None = None,  # wall-clock budget of this call; the next call resumes
    stop_at: int | None = None,  # or stop (with a checkpoint) after this step
    log=print,
):
    """Train (or resume) the text encoder + UNet; return (text_encoder_ema, unet_ema, done, state)."""
    from diffusers import DDPMScheduler

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt_path = work / "checkpoint.pt"
    tokenizer = build_clip_tokenizer()
    text_encoder, unet = build_models(recipe)
    params = [p for p in list(text_encoder.parameters()) + list(unet.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    ema_te, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    g = torch.Generator().manual_seed(recipe.seed + 7)
    step, elapsed = 0, 0.0
    if ckpt_path.is_file():
        try:  # weights_only: the state is tensors and plain values, and no pickled object gets to run code
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SnapdistillError(f"{ckpt_path}: does not load as plain tensors ({e.__class__.__name__}); refusing "
                                   "to load it (delete it to start over)") from e
        # Where to stop is not part of the trajectory: a run may be continued to a later stop_step.
        if _trajectory(state["recipe"]) != _trajectory(asdict(recipe)):
            raise ValueError(f"{ckpt_path} was written by another recipe; use a fresh --out")
        text_encoder.load_state_dict(state["text_encoder"])
        unet.load_state_dict(state["unet"])
        ema_te.load_state_dict(state["ema_text_encoder"])
        ema_unet.load_state_dict(state["ema_unet"])
        opt.load_state_dict(state["opt"])
        g.set_state(state["rng"])
        step, elapsed = state["step"], state["elapsed"]
        log(f"resumed at step {step} ({elapsed / 60:.1f} min trained)")
    end = recipe.steps if recipe.stop_step is None else min(recipe.stop_step, recipe.steps)
    if step >= end:
        return ema_te, ema_unet, True, {"step": step, "elapsed": elapsed}

    latents, ids = encode_dataset(vae, tokenizer, recipe.n_train, recipe.seed, log=log)
    empty_ids = tokenize(tokenizer, [""])[0]
    sched = DDPMScheduler(**{k: v for k, v in SD_SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    ema_params = [p for p in list(ema_te.parameters()) + list(ema_unet.parameters())]
    live_params = list(text_encoder.parameters()) + list(unet.parameters())
    text_encoder.train()
    unet.train()

    t_start, t_ckpt = time.time(), time.time()
    budget_s = None if minutes is None else minutes * 60

    def checkpoint() -> None:
        _save_checkpoint(
            ckpt_path,
            {
                "recipe": asdict(recipe),
                "step": step,
                "elapsed": elapsed + time.time() - t_start,
                "text_encoder": text_encoder.state_dict(),
                "unet": unet.state_dict(),
                "ema_text_encoder": ema_te.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "opt": opt.state_dict(),
                "rng": g.get_state(),
            },
        )

    losses, t_log = [], time.time()
    while step < end:
        # Draw a batch; drop captions; noise at uniform timesteps.
        idx = torch.randint(0, len(latents), (recipe.batch,), generator=g)
        x0, tok = latents[idx], ids[idx].clone()
        drop = torch.rand(recipe.batch, generator=g) < recipe.caption_dropout
        tok[drop] = empty_ids
        t = torch.randint(0, sched.config.num_train_timesteps, (recipe.batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        zt = sched.add_noise(x0, noise, t)
        # Update.
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe)
        eps = unet(zt, t, text_encoder(tok).last_hidden_state).sample
        loss = F.mse_loss(eps, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        # Update EMA.
        with torch.no_grad():
            decay = min(recipe.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, live_params, 1 - decay)
        if step % 50 == 0 or step == end:
            total = (elapsed + time.time() - t_start) / 60
            log(
                f"step {step}/{recipe.steps} loss {sum(losses) / len(losses):.4f} lr {_lr_at(step, recipe):.2e} "
                f"{(time.time() - t_log) / len(losses):.3f} s/step, {total:.1f} min in all"
            )
            losses, t_log = [], time.time()
        # Save snapshot.
        out_of_time = (budget_s is not None and time.time() - t_start >= budget_s) or step == stop_at
        if out_of_time or step == end or time.time() - t_ckpt >= recipe.checkpoint_minutes * 60:
            checkpoint()
            t_ckpt = time.time()
        if out_of_time:
            break
    done = step >= end
    return ema_te, ema_unet, done, {"step": step, "elapsed": elapsed + time.time() - t_start}


# Export and measurement ----------------------------------------------------------------------


def sampler_scheduler(sampler: dict | None = None):
    """The DPM-Solver++ scheduler the toy teacher ships with (SD's schedule, explicit spacing)."""
    from diffusers import DPMSolverMultistepScheduler

    base = {k: v for k, v in SD_SCHEDULER_CONFIG.items() if k not in ("clip_sample", "set_alpha_to_one")}
    return DPMSolverMultistepScheduler(**{**base, **(sampler or SAMPLER_CONFIG)}, prediction_type="epsilon")


def build_pipeline(vae, text_encoder, unet, sampler: dict | None = None):
    """A stock `StableDiffusionPipeline` of the toy components (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=build_clip_tokenizer(),
        unet=unet.eval(),
        scheduler=sampler_scheduler(sampler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe, folder: Path) -> None:
    """Save a pipeline folder with all weights stored in fp16 (measured lossless for the toy models).

    Configs keep float32 as the load dtype, so stock `from_pretrained` gives a float32 pipeline.
    """
    folder = Path(folder)
    pipe.save_pretrained(folder)
    for name in ("unet", "text_encoder", "vae"):
        model = copy.deepcopy(getattr(pipe, name)).half()
        model.save_pretrained(folder / name)
    cfg_path = folder / "text_encoder" / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["dtype"] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def sample_images(pipe, prompts: list[str], *, steps: int, guidance: float, seed: int = 0, batch: int = 256):
    """Images (N, 3, 32, 32) in [-1, 1]; image i depends only on prompts[i] and seed + i."""
    out = []
    pipe.set_progress_bar_config(disable=True)
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        with torch.no_grad():
            img = pipe(
                chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt"
            ).images
        out.append(img * 2 - 1)
    return torch.cat(out)


EVAL_SETTINGS = {"s16_g7.5": (16, 7.5), "s16_g1.0": (16, 1.0), "s4_g7.5": (4, 7.5)}


def evaluate_pipeline(
    pipe, judge, *, n: int = 1024, seed: int = 0, settings=EVAL_SETTINGS, log=print
) -> dict:
    """Judge scores (exact, acc, per attribute) of toy val prompts sampled at each (steps, guidance)."""
    from snapdistill.toy.judge import judge_images
    from snapdistill.toy.world import toy_val_prompts

    prompts = toy_val_prompts(n)
    out = {}
    for name, (steps, guidance) in settings.items():
        t0 = time.time()
        scores = judge_images(
            judge, sample_images(pipe, prompts, steps=steps, guidance=guidance, seed=seed), prompts
        )
        scores["s_per_image"] = round((time.time() - t0) / n, 4)
        out[name] = scores
        log(f"eval {name}: exact {scores['exact']:.4f} acc {scores['acc']:.4f} {scores['per_attribute']}")
    return out


def teacher_stage(
    out: Path,  # the pipeline folder to write (model_index.json, unet/, vae/, ..., manifest.json)
    work: Path,  # resumable state: vae/, checkpoint.pt
    recipe: TeacherRecipe,
    *,
    minutes: float | None = None,  # budget of this call; rerun the same command to continue
    vae_steps: int = 2000,
    n_eval: int = 1024,
    log=print,
) -> dict | None:
    """Train (or continue) the toy teacher; once finished, export and measure it. None while unfinished."""
    from diffusers import AutoencoderKL

    from snapdistill.manifest import input_entry, read_manifest, write_manifest
    from snapdistill.toy.paths import load_judge
    from snapdistill.toy.vae import vae_stage

    t0 = time.time()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    vae_dir = vae_stage(work / "vae", seed=recipe.seed, steps=vae_steps, log=log)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False)
    used = None if minutes is None else max(0.0, minutes - (time.time() - t0) / 60)
    text_encoder, unet, done, state = train_teacher(work, vae, recipe, minutes=used, log=log)
    if not done:
        log(f"stopped at step {state['step']}; rerun the same command to continue")
        return None
    pipe = build_pipeline(vae, text_encoder, unet, recipe.sampler)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "manifest.json").unlink(missing_ok=True)  # the folder is unfinished until it is rewritten
    save_pipeline(pipe, out)
    from diffusers import StableDiffusionPipeline

    shipped = StableDiffusionPipeline.from_pretrained(out)  # measure what is shipped (fp16 storage)
    judge = load_judge()
    metrics = {
        "train_minutes": round(state["elapsed"] / 60, 1),
        "eval": evaluate_pipeline(shipped, judge, n=n_eval, seed=recipe.seed, log=log),
        "n_eval": n_eval,
    }
    config = {
        "recipe": asdict(recipe),
        "vae": read_manifest(vae_dir)["config"],
        "scheduler_train": SD_SCHEDULER_CONFIG,
        "sampler": {"class": "DPMSolverMultistepScheduler", **recipe.sampler},
        "prediction_type": "epsilon",
        "storage": "fp16 weights, loaded as float32",
    }
    counts = {
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "text_encoder_params": sum(p.numel() for p in text_encoder.parameters()),
        "vae_params": sum(p.numel() for p in vae.parameters()),
        "steps": state["step"],
    }
    write_manifest(out, stage="toy-teacher", config=config, inputs=[input_entry(vae_dir)], counts=counts,
                   metrics=metrics, seed=recipe.seed)  # fmt: skip
    return metrics
