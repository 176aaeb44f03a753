#!/usr/bin/env bash
# Rebuilds tests/fixtures/code_lm_tiny: a tiny Qwen3 (hidden 64, 2 layers, 4 query heads / 1 KV
# head, head_dim 16, the 8192-id tokenizer) trained for 300 steps on the CPU by train.py, saved
# by it in Hugging Face layout (BF16), with golden.json from golden.py --impl ours. It checks the
# pipeline (training script -> HF folder -> our engine) in CI; the real model is checked against
# transformers. Needs python3 with torch (Debian's python3-torch) and corpus/carry
# (prepare_carry.py).
#   tools/code_lm/make_tiny_fixture.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" tools/code_lm/train.py --train_data corpus/carry/train-00000.bin.xz \
  --heldout_data corpus/carry/heldout.bin.xz --tokenizer corpus/carry/tokenizer.json \
  --out "$work" --hidden_size 64 --intermediate_size 128 --layers 2 --heads 4 --kv_heads 1 \
  --head_dim 16 --stages 128:0.5,512:0.5 --batch_tokens 2048 --max_steps 300 \
  --progress_by_steps --warmup_steps 20 --lr 3e-3 --device cpu --dtype fp32 \
  --eval_lengths 1024 --eval_windows 2 --short_context 512 --log_every 50 --eval_every_s 1e9 \
  --save_every_s 0
out=tests/fixtures/code_lm_tiny
rm -rf "$out"
mkdir -p "$out"
cp "$work/model/config.json" "$work/model/model.safetensors" "$out/"
cp "$work/model/config.json" "$work/model/model.safetensors" "$work/model/tokenizer.json" "$work/"
"$python" tools/code_lm/golden.py --model "$work/model" --impl ours \
  --ids tests/fixtures/code_lm/heldout_sample.ids --prompt_tokens 1024 --new_tokens 24 \
  --out "$out/golden.json"
ls -l "$out"
