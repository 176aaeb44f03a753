#!/usr/bin/env bash
# Regenerates every golden fixture on a machine with PyTorch, transformers and tokenizers:
#   tools/run_fixture_generation.sh OUT_DIR QWEN3_TOKENIZER_JSON
# Writes OUT_DIR/fixtures.tar (a tests/fixtures-shaped tree: llama3_tiny/, qwen2_tiny/,
# qwen3_tiny/, qwen3_tiny_bf16/, tokenizer/qwen3_golden.json, versions.json) and OUT_DIR/log.txt.
# Unpack with `tar -C tests -xf OUT_DIR/fixtures.tar`. Each step runs even if an earlier one
# failed, so one run shows every problem; the exit status is non-zero if any step failed.
set -u -o pipefail
out=${1:?usage: run_fixture_generation.sh OUT_DIR QWEN3_TOKENIZER_JSON}
tokenizer=${2:?usage: run_fixture_generation.sh OUT_DIR QWEN3_TOKENIZER_JSON}
export PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
mkdir -p "$work/fixtures" "$out"
{
  python3 "$here/make_fixtures.py" --out "$work/fixtures"
  python3 "$here/make_tokenizer_golden.py" --tokenizer "$tokenizer" \
    --out "$work/fixtures/tokenizer/qwen3_golden.json"
  (cd "$work" && find fixtures -type f -exec ls -l {} +)
} 2>&1 | tee "$out/log.txt"
tar -C "$work" -cf "$out/fixtures.tar" fixtures
rm -rf "$work"
# The steps above run in a pipeline (a subshell), so success is read from the log.
grep -q '^failed: none$' "$out/log.txt" && grep -q '^wrote ' "$out/log.txt"
