#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (coverage, AddressSanitizer, UBSan) and
# runs each over its committed seed corpus for a bounded, seeded number of inputs, so a run is
# repeatable: any crash, leak or undefined behaviour fails the script with the reproducer's path.
#
# Environment: MPA_FUZZ_RUNS (inputs per target, default 30000), MPA_FUZZ_BUILD_DIR (default
# build-fuzz). Longer local runs: MPA_FUZZ_RUNS=-1 runs until stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MPA_FUZZ_BUILD_DIR:-build-fuzz}
runs=${MPA_FUZZ_RUNS:-30000}
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMPA_FUZZ=ON -DMPA_WITH_CUDA=OFF -DMPA_BUILD_TESTS=OFF >/dev/null
targets=(safetensors model_config tokenizer request)
cmake --build "$build" -j "${MPA_JOBS:-$(nproc)}" --target "${targets[@]/%/_fuzz}"
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for t in "${targets[@]}"; do
  # New inputs the run finds go to a scratch folder; the committed corpus stays as it is.
  corpus=$(mktemp -d)
  case "$t" in
    model_config) seeds=tests/fuzz/corpus/config ;;
    *) seeds=tests/fuzz/corpus/$t ;;
  esac
  artifacts=$(mktemp -d)
  echo "fuzz: ${t}_fuzz, $runs inputs from $seeds"
  if ! "$build/bin/${t}_fuzz" -seed=1 -runs="$runs" -max_len=65536 -timeout=10 \
      -rss_limit_mb=4096 -artifact_prefix="$artifacts/" "$corpus" "$seeds" \
      >"$artifacts/log" 2>&1; then
    tail -40 "$artifacts/log"
    echo "fuzz: ${t}_fuzz FAILED; reproducer in $artifacts"
    exit 1
  fi
  grep -E "^#[0-9]+.*(DONE|pulse)" "$artifacts/log" | tail -1
  rm -rf "$corpus" "$artifacts"
done
echo "fuzz: every target ran clean"
