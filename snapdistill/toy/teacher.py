"""The toy teacher: a `CLIPTextModel` and an epsilon `UNet2DConditionModel` trained jointly on toy latents.

The VAE (see `snapdistill.toy.vae`) is trained first and frozen; toy train images are encoded once
into 4x8x8 latents. The text encoder and UNet then learn SD's epsilon objective on SD's
scaled-linear schedule, with ~10% of captions dropped to "" so that classifier-free guidance
works (the pipeline encodes the negative prompt ""). Training is resumable: a checkpoint
(weights, EMA, optimiser, RNG state) is written atomically every few minutes, and a `--minutes`
budget stops a run that a later call continues. The exported pipeline uses the EMA weights.

Exporting the trained models as a pipeline and measuring it: `snapdistill.toy.pipeline`.
"""

from __future__ import annotations

import copy
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
from snapdistill.toy.pipeline import SAMPLER_CONFIG, build_pipeline, evaluate_pipeline, save_pipeline

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
