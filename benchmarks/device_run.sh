#!/bin/bash
# The device calls of docs/benchmarks.md (a lent GPU machine: one H200, 16 CPU cores, no network):
#   1. (GPU_ROWS=1) GPU cost rows, bf16, ResNet-34 -> ResNet-18 at 224 px (benchmarks/overhead.py --device cuda);
#   2. (WORKERS != 0) the outer-loop study (benchmarks/outer_loop.py) on WORKERS CPU processes, VARIANTS (default: all), for at
#      most DEADLINE seconds; results in $OUT/outer_loop_results.{json,md}.
# Call 1: GPU_ROWS=1 WORKERS=13 DEADLINE=400 VARIANTS=<the first 12 variants>; call 2: WORKERS=15 DEADLINE=230
#   VARIANTS=dist-T1,dist-T16,from-T1-k1,from-T1-k5,from-T1-k5-lr3e-2,from-T1-k5-lr1e-1,from-T1-k20-lr1e-1,
#   from-kd-k5-lr3e-2,from-T16-k5 NUM_SEEDS=2. Call 3 (with clipped virtual steps): GPU_ROWS=1 WORKERS=0
#   (GPU rows only).
# The machine's image lacks some packages: their wheels travel in .whl/ (python3 -m pip download --no-deps
# --only-binary=:all: --python-version 3.12 ... -d .whl transformers==5.24.0 timm==1.0.31 datasets==5.2.0 ...).
cd "$(dirname "$0")/.." || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/env.txt
python3 -c "import torch, timm, transformers, datasets, accelerate, lkd_hf; print('torch', torch.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a $OUT/env.txt
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a $OUT/env.txt
if [ "${WORKERS:-13}" != 0 ]; then
python3 benchmarks/outer_loop.py --workers ${WORKERS:-13} --deadline ${DEADLINE:-400} --num_seeds ${NUM_SEEDS:-3} \
    ${VARIANTS:+--variants $VARIANTS} --output_dir /tmp/ol > $OUT/sweep.log 2>&1 &
SWEEP=$!
( while kill -0 $SWEEP 2>/dev/null; do sleep 20; cp /tmp/ol/results.json $OUT/outer_loop_results.json 2>/dev/null; done ) &
fi
if [ "${GPU_ROWS:-0}" = 1 ]; then
python3 - <<'PY'
import os
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for c in range(10):
    d = f"/tmp/imgs/train/class{c}"
    os.makedirs(d, exist_ok=True)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(f"{d}/{i}.png")
PY
timeout 330 python3 benchmarks/overhead.py --device cuda --bf16 true --dataset /tmp/imgs --teacher_model resnet34 \
    --student_model resnet18 --img_size 224 --batch_size 128 --steps 40 --warmup_steps 10 --threads 2 \
    --rows ce,kd,lkd-unrolled-i10,lkd-fd-i10,lkd-fd-i1 --out $OUT/overhead_gpu.json > $OUT/overhead_gpu.log 2>&1
echo "overhead exit $?"
tail -20 $OUT/overhead_gpu.log
fi
if [ "${WORKERS:-13}" != 0 ]; then
wait $SWEEP
echo "sweep exit $?"
cp /tmp/ol/results.json $OUT/outer_loop_results.json; cp /tmp/ol/results.md $OUT/outer_loop_results.md
tail -60 $OUT/sweep.log
fi
