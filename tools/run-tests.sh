#!/usr/bin/env bash
# The project's test command: installs dependencies, builds everything (the CUDA code too when the
# toolkit is present, even without a GPU), checks formatting, and runs every test with ctest.
# GPU tests skip cleanly on a machine without a device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
build=${MPA_BUILD_DIR:-build}
jobs=${MPA_JOBS:-$(nproc)}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$jobs"
bash tools/check-format.sh
# Coverage-guided fuzzing (clang, ASan + UBSan) of the file parsers, bounded and seeded.
MPA_FUZZ_RUNS=${MPA_FUZZ_RUNS:-100000} bash tools/run-fuzz.sh
ctest --test-dir "$build" --output-on-failure -j "$jobs" --timeout 600
