#!/usr/bin/env bash
# Evaluate an existing model on the HPSv2 benchmark: 800 prompts in each of 4 styles, scored with
# HPS (an open_clip ViT-H-14 fine-tune, loaded from a local checkpoint; nothing downloads).
#
#   HPS_PROMPTS=hps_benchmark/ HPS_CHECKPOINT=HPS_v2.1_compressed.pt examples/eval_hps.sh
#   MODEL=runs/direct8/student STEPS=8 HPS_PROMPTS=... HPS_CHECKPOINT=... examples/eval_hps.sh
#   SNAPDISTILL="accelerate launch -m snapdistill" ... examples/eval_hps.sh     # several GPUs
#
# HPS_PROMPTS holds anime.json, concept-art.json, paintings.json and photo.json (HPSv2's benchmark
# prompt lists). v2.0 and v2.1 scores are not comparable, so HPS_VERSION must match the checkpoint.
# Cost: 3,200 sampled images (the sample manifest's s_per_image gives the time) plus one ViT-H-14 pass each.
set -euo pipefail

MODEL=${MODEL:-sd15}                       # teacher name, pipeline folder or .safetensors file
STEPS=${STEPS:-}                           # empty: a student's own step count, else 20
GUIDANCE=${GUIDANCE:-7.5}
PROMPTS=${HPS_PROMPTS:?set HPS_PROMPTS to the folder with anime.json, concept-art.json, paintings.json, photo.json}
CHECKPOINT=${HPS_CHECKPOINT:?set HPS_CHECKPOINT to HPS_v2.1_compressed.pt or HPS_v2_compressed.pt}
VERSION=${HPS_VERSION:-v2.1}
OUT=${OUT:-runs/hps-$(basename "$MODEL")${STEPS:+-$STEPS}}
SNAPDISTILL=${SNAPDISTILL:-snapdistill}

# shellcheck disable=SC2086  # SNAPDISTILL may be a launcher plus module
$SNAPDISTILL sample --teacher "$MODEL" --hps-benchmark "$PROMPTS" ${STEPS:+--steps "$STEPS"} \
    --guidance "$GUIDANCE" --out "$OUT/samples"
# shellcheck disable=SC2086
$SNAPDISTILL eval "$OUT/samples" --hps-checkpoint "$CHECKPOINT" --hps-version "$VERSION" --out "$OUT/eval"
cat "$OUT/eval/report.md"
