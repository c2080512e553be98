#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md on one CUDA machine: `bash bench/gpu.sh [135m|0.7b|all]`.
# Models are random-weight copies of real architectures (bench/common.py CONFIGS): throughput does
# not depend on the weights. Results: one JSON per run under $OUT (default bench-results/).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
what=${1:-all}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, trl, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__)"
run() { python3 bench/run.py "$@" 2>&1 | grep -v ' INFO \|Warning\|warn(' ; }
if [[ $what == 135m || $what == all ]]; then
  # SmolLM2-135M, LoRA, the quickstart's batch 8: afina's defaults vs TRL's, then afina vs a bare script.
  run defaults --model random:smollm2-135m --steps 60 --repeats 3 --json "$OUT/defaults-135m.json"
  run overhead --model random:smollm2-135m --steps 60 --repeats 3 --json "$OUT/overhead-135m.json"
fi
if [[ $what == 0.7b || $what == all ]]; then
  # A 0.7B llama (full fine-tuning, batch 64) for MFU; and padding-free under SDPA on the 135M model.
  run defaults --model random:0.7b --method full --batch 64 --steps 30 --repeats 2 --lr 1e-4 --json "$OUT/defaults-0.7b.json"
  run defaults --model random:smollm2-135m --steps 60 --repeats 3 --padding-free --json "$OUT/defaults-135m-padding-free.json"
fi
