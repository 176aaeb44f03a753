#!/usr/bin/env bash
# The project's test command: installs dependencies, builds everything (the CUDA code too when the
# toolkit is present, even without a GPU), checks formatting, runs the fuzz targets, every test
# with ctest, then the CPU tests again under AddressSanitizer + UBSan and the server's tests under
# ThreadSanitizer (tools/run-sanitizers.sh; MPA_SANITIZERS="" skips them). GPU tests skip cleanly
# on a machine without a device. Each step's duration is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MPA_BUILD_DIR:-build}
jobs=${MPA_JOBS:-$(nproc)}
steps=()
summary() { printf 'run-tests: %s\n' "${steps[@]}" "$(printf '%-12s %5d s' total $SECONDS)"; }
# Runs a step and records its duration; a failing step ends the run (after the summary).
step() {
  local name=$1 start=$SECONDS rc=0
  shift
  "$@" || rc=$?
  steps+=("$(printf '%-12s %5d s' "$name" $((SECONDS - start)))$([ $rc = 0 ] || echo "  FAILED ($rc)")")
  if [ $rc != 0 ]; then
    summary
    exit $rc
  fi
}
step deps bash tools/install-deps.sh
step build bash -c "cmake -S . -B '$build' -G Ninja -DCMAKE_BUILD_TYPE=Release &&
  cmake --build '$build' -j '$jobs'"
step format bash tools/check-format.sh
# Coverage-guided fuzzing (clang, ASan + UBSan) of the file parsers, bounded and seeded.
step fuzz env MPA_FUZZ_RUNS="${MPA_FUZZ_RUNS:-100000}" bash tools/run-fuzz.sh
step ctest ctest --test-dir "$build" --output-on-failure -j "$jobs" --timeout 600
# MPA_SANITIZERS="" leaves the sanitizer runs out (default: "address thread").
if [ -n "${MPA_SANITIZERS-address thread}" ]; then
  step sanitizers bash tools/run-sanitizers.sh
fi
summary
