#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, start the decode server on the
# default model, and stream a generation to the client. The default model is stories260K from the
# shared models folder beside the checkout; without it, a tiny test fixture (ids only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
build=${MPA_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)"
model=${MPA_MODEL:-../shared/models/stories260K}
if [ ! -f "$model/config.json" ]; then
  model=tests/fixtures/llama3_tiny
  echo "stories260K not found; using the fixture $model (no tokenizer: ids only)"
fi
if [ -x "$build/bin/mpa_server" ] && [ -x "$build/bin/mpa_client" ]; then
  exec bash tools/serve-and-generate.sh "$build" "$model"
fi
if [ -f "$model/tokenizer.json" ]; then
  "$build/bin/mpa_generate" --model "$model" --prompt "Once upon a time" --max_new_tokens 200 \
    --temperature 0 --output text
else
  "$build/bin/mpa_generate" --model "$model" --prompt_ids 1,2,3 --max_new_tokens 32 --output ids
fi
