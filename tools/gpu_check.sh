#!/usr/bin/env bash
# One pass of GPU checks and measurements, run on a machine with an NVIDIA GPU from the repository
# root: every GPU test binary in BIN_DIR, then the benchmarks that are there. Logs and results go
# to OUT_DIR (default ./gpu_out).
#
# Usage: tools/gpu_check.sh BIN_DIR [OUT_DIR] [COMMIT]   (runs *_gpu_test and *_gpu_e2e_test)
#   BIN_DIR holds *_gpu_test, decode_attention_bench, prefill_attention_bench,
#   multipole_attention_bench, decode_step_bench (any subset) and, if the
#   binaries were built elsewhere, a lib/ of their shared libraries (made by a bundling script).
# Environment: MPA_SKIP_TESTS=1, MPA_SKIP_BENCH=1 to leave a part out; MPA_SWEEP=1 to add the
# decode-attention tuning sweep; MPA_QUICK=1 for the multipole benchmark's two-shape quick run;
# MPA_TESTS=pattern to run only the test binaries whose names match.
set -uo pipefail
bin=${1:?usage: gpu_check.sh BIN_DIR [OUT_DIR] [COMMIT]}
out=${2:-gpu_out}
commit=${3:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$out"
export LD_LIBRARY_PATH="$bin/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
# Tests built elsewhere find the repository's fixtures (and a model folder) through these.
export MPA_SOURCE_ROOT="${MPA_SOURCE_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}"
status=0

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv | tee "$out/device.txt"

if [ "${MPA_SKIP_TESTS:-0}" != 1 ]; then
  : > "$out/gpu_tests.log"
  echo "commit $commit; $(head -2 "$out/device.txt" | tail -1)" >> "$out/gpu_tests.log"
  for t in "$bin"/*_gpu_test "$bin"/*_gpu_e2e_test; do
    [ -x "$t" ] || continue
    case "$(basename "$t")" in ${MPA_TESTS:-*}) ;; *) continue ;; esac
    echo "=== $(basename "$t")" | tee -a "$out/gpu_tests.log"
    if ! (cd "$(dirname "$0")/.." && "$t" --gtest_color=no) >> "$out/gpu_tests.log" 2>&1; then
      status=1
      echo "FAILED: $(basename "$t")" | tee -a "$out/gpu_tests.log"
    fi
    grep -E "^\[  (PASSED|FAILED|SKIPPED) " "$out/gpu_tests.log" | tail -3
  done
  grep -E "^\[  FAILED  \]|Failure|error" "$out/gpu_tests.log" | head -40
fi

if [ "${MPA_SKIP_BENCH:-0}" != 1 ]; then
  if [ -x "$bin/decode_attention_bench" ]; then
    sweep=""
    [ "${MPA_SWEEP:-0}" = 1 ] && sweep=--sweep
    "$bin/decode_attention_bench" $sweep --out "$out/decode_attention.csv" | tee "$out/decode_attention_bench.log"
    if command -v python3 > /dev/null && python3 -c "import torch" 2> /dev/null; then
      PYTHONUNBUFFERED=1 python3 "$(dirname "$0")/bench_sdpa.py" --ours "$out/decode_attention.csv" \
        --md "$out/decode_attention_h200.md" --commit "$commit" > "$out/bench_sdpa.log" 2>&1 || status=1
      tail -22 "$out/bench_sdpa.log"
    fi
  fi
  if [ -x "$bin/prefill_attention_bench" ]; then
    "$bin/prefill_attention_bench" --out "$out/prefill_attention.csv" | tee "$out/prefill_attention_bench.log"
    if command -v python3 > /dev/null && python3 -c "import torch" 2> /dev/null; then
      PYTHONUNBUFFERED=1 python3 "$(dirname "$0")/bench_prefill_sdpa.py" --ours "$out/prefill_attention.csv" \
        --md "$out/prefill_attention_h200.md" --commit "$commit" > "$out/bench_prefill_sdpa.log" 2>&1 || status=1
      tail -12 "$out/bench_prefill_sdpa.log"
    fi
  fi
  if [ -x "$bin/multipole_attention_bench" ]; then
    "$bin/multipole_attention_bench" ${MPA_QUICK:+--quick} --out "$out/multipole_attention.csv" | tee "$out/multipole_attention_bench.log"
    if command -v python3 > /dev/null && python3 -c "import torch" 2> /dev/null; then
      PYTHONUNBUFFERED=1 python3 "$(dirname "$0")/bench_multipole_sdpa.py" --ours "$out/multipole_attention.csv" \
        --md "$out/multipole_attention.md" --commit "$commit" > "$out/bench_multipole_sdpa.log" 2>&1 || status=1
      tail -25 "$out/bench_multipole_sdpa.log"
    fi
  fi
  if [ -x "$bin/decode_step_bench" ]; then
    "$bin/decode_step_bench" --out "$out/decode_step_h200.md" --commit "$commit" 2>&1 | tee "$out/decode_step_bench.log" || status=1
  fi
fi
exit $status
