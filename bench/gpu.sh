#!/usr/bin/env bash
# The GPU check, prepared to run in one call of a few minutes on one H100/H200 (the device tool runs it
# from the repository root; results land in $OUT, or ./bench-gpu-out here):
#   training throughput and MFU of a ~1B Llama-2-style model, camelid vs transformers (bench/gpu_train.py)
set -euo pipefail
OUT=${OUT:-bench-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
timeout 240 python3 bench/gpu_train.py --steps 10 --json "$OUT/train.json" 2>&1 | tee "$OUT/train.log"
