#!/usr/bin/env bash
# Distil your own fine-tuned SD 1.5 checkpoint (a single .safetensors/.ckpt file or a diffusers folder)
# into an 8-step student that needs one UNet call per step, then sample it.
#
#   CHECKPOINT=my_finetune.safetensors DATA=data/shards-clean OUT=runs/mine bash examples/distill_finetuned_sd15.sh
#
# A single-file checkpoint needs SD 1.5's config in the Hugging Face cache (or pass --allow-download).
# DATA is a folder written by `snapdistill build-data` (see examples/build_coco_shards.sh).
set -euo pipefail
: "${CHECKPOINT:?set CHECKPOINT to your fine-tuned weights (file or pipeline folder)}"
: "${DATA:?set DATA to a build-data shard folder}"
OUT=${OUT:-runs/finetune}
LAUNCH=${LAUNCH:-accelerate launch -m snapdistill}
TRAIN=${TRAIN:---batch-size 8 --grad-accum 4 --lr 1e-5 --mixed-precision bf16 --gradient-checkpointing}

# Stage 1: the guidance scale becomes an input (w = s - 1): one UNet call per step.
$LAUNCH distill-guidance --teacher "$CHECKPOINT" --shards "$DATA" --max-steps 6000 $TRAIN --out "$OUT/guided"
# Stage 2: 16 teacher steps -> 8 student steps in one stage (SnapFusion's direct route).
$LAUNCH distill-steps --teacher "$OUT/guided/student" --shards "$DATA" --from 16 --to 8 --max-steps 4000 \
    $TRAIN --out "$OUT/direct8"
# The student is a plain diffusers pipeline folder; sample it with its own 8-step scheduler.
$LAUNCH sample --teacher "$OUT/direct8/student" --prompt "a watercolor of a lighthouse at dawn" --out "$OUT/samples"
echo "student: $OUT/direct8/student (StableDiffusionPipeline.from_pretrained works on it)"
