#!/usr/bin/env bash
# Build 512 px WebDataset shards from a local MS-COCO 2017 folder, clean the captions, and read them back.
#
#   examples/build_coco_shards.sh /data/coco [OUT] [SPLIT]
#
# COCO's own layout is expected: /data/coco/annotations/captions_train2017.json and /data/coco/train2017/.
# Each image gives one sample with its first caption (add ",captions=all" to the source for one per caption).
# WORKERS (default: all cores) sets the processes; the shards are the same for any number.
set -euo pipefail

COCO=${1:?usage: $0 COCO_ROOT [OUT] [SPLIT]}
OUT=${2:-runs/coco-shards}
SPLIT=${3:-train2017}
WORKERS=${WORKERS:-$(nproc)}
PY=${PYTHON:-python}

ANN="$COCO/annotations/captions_${SPLIT}.json"
if [ ! -f "$ANN" ]; then
    echo "error: $ANN not found; download annotations_trainval2017.zip and $SPLIT.zip into $COCO" >&2
    exit 2
fi

# 1. Images -> shards: short side to 512, centre crop, JPEG q95; tiny and extreme-aspect images dropped.
$PY -m snapdistill build-data \
    --source "coco:$ANN,images=$COCO/$SPLIT" \
    --resolution 512 --min-side 256 --min-aspect 0.5 --max-aspect 2.0 \
    --shard-size 1000 --workers "$WORKERS" --out "$OUT/raw"

# 2. Clean the captions (no model): the old text stays in txt_orig.
$PY -m snapdistill recaption --in "$OUT/raw" --mode clean --out "$OUT/clean"

# 3. Read the result with plain webdataset, as a training script would.
$PY - "$OUT/clean" <<'PY'
import glob
import sys

import webdataset as wds

urls = sorted(glob.glob(f"{sys.argv[1]}/shard-*.tar"))
sample = next(iter(wds.WebDataset(urls, shardshuffle=False).decode("pil")))
print(f"{len(urls)} shards; first sample {sample['__key__']}: {sample['jpg'].size} {sample['txt']!r}")
PY
echo "rejects by reason: see $OUT/raw/manifest.json (counts.rejected) and $OUT/raw/rejects.jsonl"
