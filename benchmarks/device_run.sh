#!/bin/bash
# One call on a lent GPU machine (at most 10 minutes), the cost of the meta step on CUDA:
#   1. the cost rows of benchmarks/overhead.py for ResNet-34 -> ResNet-18 at 224 px, bf16, batch 128: KD, LKD with
#      `finite_difference` at meta_interval 1 and 10, `unrolled` at 10, and a frozen learned loss (step time, meta-step
#      time, peak memory per row);
#   2. a 2-step run of recipes/imagenet.py (bf16) on a generated image folder;
#   3. the peak memory of one meta step over a KD step (benchmarks/memory.py, fp32, batch MEM_BATCH).
# Output in $OUT: env.txt, overhead.json / overhead.log, table.md (the cost table), imagenet.log, memory.json / .log.
# DEVICE=cpu BF16=false IMG_SIZE=32 BATCH=8 STEPS=8 WARMUP=2 MEM_BATCH=2 runs the same small on the CPU (a check).
# Packages missing from the machine's image travel as wheels in .whl/ (e.g. python3 -m pip download --no-deps
# --only-binary=:all: --python-version 3.12 -d .whl transformers==5.24.0 timm==1.0.31 ...); they are installed first.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/device_out}
DEVICE=${DEVICE:-cuda} BF16=${BF16:-true} IMG_SIZE=${IMG_SIZE:-224} BATCH=${BATCH:-128} STEPS=${STEPS:-40}
WARMUP=${WARMUP:-10} PYTHON=${PYTHON:-python3} MEM_BATCH=${MEM_BATCH:-128}
mkdir -p "$OUT"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl > /dev/null 2>&1; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU"; } | tee "$OUT/env.txt"
$PYTHON -c "import torch, timm, transformers, accelerate, lkd_hf; print('torch', torch.__version__, 'timm', \
timm.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'cuda', \
torch.cuda.is_available())" 2>&1 | tee -a "$OUT/env.txt"

IMAGES=$(mktemp -d)
$PYTHON - "$IMAGES" "$IMG_SIZE" <<'PY'
import os
import sys

import numpy as np
from PIL import Image

root, size = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
for split, count in (("train", 40), ("val", 4)):
    for c in range(10):
        folder = os.path.join(root, split, f"class{c}")
        os.makedirs(folder, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(f"{folder}/{i}.png")
PY

timeout 420 $PYTHON benchmarks/overhead.py --device "$DEVICE" --bf16 "$BF16" --dataset "$IMAGES/train" \
    --teacher_model resnet34 --student_model resnet18 --img_size "$IMG_SIZE" --batch_size "$BATCH" --steps "$STEPS" \
    --warmup_steps "$WARMUP" --threads 2 --rows kd,lkd-fd-i1,lkd-fd-i10,lkd-unrolled-i10,lkd-frozen \
    --out "$OUT/overhead.json" > "$OUT/overhead.log" 2>&1
echo "overhead exit $?"
sed -n '/^| row/,/^$/p' "$OUT/overhead.log" | tee "$OUT/table.md"

CPU_FLAG=()
[ "$DEVICE" = cpu ] && CPU_FLAG=(--use_cpu true)
timeout 120 $PYTHON recipes/imagenet.py --dataset "$IMAGES" --teacher_pretrained false --image_size "$IMG_SIZE" \
    --max_steps 2 --bf16 "$BF16" --per_device_train_batch_size 4 --per_device_eval_batch_size 8 --loss lkd \
    --meta_interval 1 --eval_strategy no --save_strategy no --dataloader_num_workers 0 --report_to none \
    --output_dir "$(mktemp -d)" "${CPU_FLAG[@]}" > "$OUT/imagenet.log" 2>&1
echo "imagenet recipe exit $?"
tail -5 "$OUT/imagenet.log"
rm -rf "$IMAGES"

timeout 90 $PYTHON benchmarks/memory.py --device "$DEVICE" --batch_size "$MEM_BATCH" --img_size "$IMG_SIZE" \
    --rows kd,unrolled/k1,unrolled-one-graph/k1,finite_difference/k1 --out "$OUT/memory.json" > "$OUT/memory.log" 2>&1
echo "memory exit $?"
sed -n '/^| row/,$p' "$OUT/memory.log"
