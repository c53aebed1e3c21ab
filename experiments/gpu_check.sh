#!/usr/bin/env bash
# GPU check of prune-bench on Llama-3-8B shapes (random bf16 weights built on the GPU; nothing downloaded).
#
#   bash experiments/gpu_check.sh            # writes ./bench_gpu.json and ./bench_gpu.log
#   OUT=/some/dir bash experiments/gpu_check.sh
#
# Needs only torch and transformers (no hydra/omegaconf/wandb/datasets, no pip install: PYTHONPATH points
# at the checkout). Sized for one H200: 1 warm-up + 1 timed round per loop, 8 calibration sequences of
# 128/512/2048 tokens in batches of 4 (Taylor time/memory/MFU at each), prefill 4 x 512, decode 8 x 64
# new tokens, removal over 32 layers / 64 blocks; about 3-4 minutes, hard-capped below 8 minutes. The
# JSON is rewritten after every section, so a cap still leaves what finished (with "complete": false).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT:-.}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
cd "$REPO"

{
  echo "== $(date -u +%FT%TZ) $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi unavailable"
  python - <<'EOF'
import importlib.util, torch, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "| transformers", transformers.__version__,
      "| rich", importlib.util.find_spec("rich") is not None)
import prune.bench  # noqa: F401  (the import chain must not need hydra/omegaconf/wandb/datasets)
import sys
heavy = sorted(m for m in ("hydra", "omegaconf", "wandb", "datasets") if m in sys.modules)
print("heavy modules imported by prune.bench:", heavy or "none")
EOF
} 2>&1 | tee "$OUT_DIR/bench_gpu.log"

# 470 s cap for the benchmark itself (+ ~20 s above): the whole script stays under 8 minutes.
timeout --signal=TERM --kill-after=10 470 \
  python -m prune.bench --preset llama3_8b --device cuda --seq-lens 128,512,2048 --batch-size 4 \
    --num-samples 8 --repeats 1 --warmup 1 --out "$OUT_DIR/bench_gpu.json" 2>&1 | tee -a "$OUT_DIR/bench_gpu.log"
rc=${PIPESTATUS[0]}
echo "== prune-bench exit status $rc; JSON: $OUT_DIR/bench_gpu.json" | tee -a "$OUT_DIR/bench_gpu.log"
nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null | sed 's/^/GPU memory used after: /' || true
exit "$rc"
