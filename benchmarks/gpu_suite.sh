#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one call (~30 min on one H100): the CUDA tests, the
# benchmarks of issues 6 and 7 with their CUDA defaults, and 40 steps of `attnlab train
# gpt2-124m-32k` (32k tokens, 1024-token window) through the CLI. Results go to
# benchmarks/results/*-cuda.* and, when $OUT is set (the device machine), are copied there.
#
#   bash benchmarks/gpu_suite.sh                 # all steps
#   # the device tool allows 10 minutes a command: three calls of at most ~10 min each
#   bash benchmarks/gpu_suite.sh tests nanogpt; bash benchmarks/gpu_suite.sh long train32k
#   bash benchmarks/gpu_suite.sh generate attention ttq
#   bash benchmarks/gpu_suite.sh tests nanogpt   # some steps: tests nanogpt long train32k generate attention ttq
#
# nanoGPT's model.py must be in third_party/nanogpt (ignored by git, never committed):
#   mkdir -p third_party/nanogpt && git --git-dir=/work/.mirror/karpathy+nanoGPT/repo archive HEAD model.py \
#     | tar -x -C third_party/nanogpt
# Each step runs under its own time limit; a failed step is reported and the others still run.
# The exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python}
LOG=benchmarks/results/gpu_suite.log
mkdir -p benchmarks/results
echo "=== gpu_suite $(date -u +%F\ %T) steps: ${*:-all}" >> "$LOG"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(tests nanogpt long train32k generate attention ttq)
failed=0

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" \
  | tee -a "$LOG" || exit 99
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"

for s in "${STEPS[@]}"; do
  case $s in
    tests) step tests 240 $PY -m pytest -p no:cacheprovider tests/gpu tests/bench/test_bench_attention.py -rs ;;
    nanogpt) step nanogpt 360 $PY benchmarks/vs_nanogpt.py --nanogpt third_party/nanogpt ;;
    long) step long 420 $PY benchmarks/long_context.py --no-rope --strict-graph ;;
    train32k) rm -rf /tmp/gpt2-124m-32k
      step train32k 420 $PY -m attnlab train gpt2-124m-32k train.max_steps=40 train.eval_every=20 \
        train.ckpt_every=0 train.log_every=5 train.out_dir=/tmp/gpt2-124m-32k --no-progress
      cp /tmp/gpt2-124m-32k/metrics.jsonl benchmarks/results/train_gpt2-124m-32k-cuda.jsonl 2>/dev/null ;;
    generate) step generate 300 $PY benchmarks/generate.py ;;
    attention) step attention 280 $PY -m attnlab bench attention --seq-lens 1024,4096,16384 \
      --backends auto,sdpa,flex,chunked,sdpa-flash,sdpa-cudnn ;;
    ttq) step ttq 400 $PY benchmarks/time_to_quality.py --nanogpt third_party/nanogpt --device cuda --budget-s 120 ;;
    *) echo "unknown step '$s' (tests nanogpt long train32k generate attention ttq)" | tee -a "$LOG"; failed=$((failed + 1)) ;;
  esac
done

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/results" "$OUT/docs"
  cp benchmarks/results/*cuda* benchmarks/results/gpu_suite.log "$OUT/results/" 2>/dev/null
  cp docs/*-cuda.png "$OUT/docs/" 2>/dev/null
fi
echo "gpu_suite: ${#STEPS[@]} steps, $failed failed" | tee -a "$LOG"
exit "$failed"
