#!/usr/bin/env bash
# One training chunk of the long-context C-source model on a GPU machine (PyTorch 2.x and
# transformers there), run from the repository root with the carry folder made by
# prepare_carry.py:
#
#   bash tools/code_lm/device_train.sh CARRY OUT
#
# Trains (train.py, time-paced), evaluates held-out perplexity at 16K vs 2K context (and 32K),
# writes golden logits with transformers' Qwen3ForCausalLM (golden.py, fp32 on the CPU) and checks
# that Hugging Face `tokenizers` encodes the held-out sample exactly as our tokenizer does. Then
# packs OUT within the device's return limits (at most 8 files of 16 MiB):
#
#   OUT/model-0000k-of-0000n.safetensors   the weights (BF16 shards under 15 MB)
#   OUT/result.tar                         config.json, model.safetensors.index.json,
#                                          tokenizer.json, golden.json, train_state.json,
#                                          curve.csv, eval.json, train.log, env.txt
#   OUT/log.txt                            everything printed
#
# tools/code_lm/unpack_result.sh turns them back into a model folder. Environment knobs:
#   TOTAL_S   seconds the training script may take, loading to evaluation (default 490; the
#             golden and packing add about 30 s)
#   STAGES    length curriculum (train.py --stages)
#   RESUME    a model folder from an earlier chunk (unpack_result.sh output) to continue
#   DECAY     fraction of the chunk's time spent decaying the learning rate (0 when another chunk
#             will follow)
#   EXTRA     more train.py flags
set -u -o pipefail
carry=${1:?usage: device_train.sh CARRY OUT}
out=${2:?usage: device_train.sh CARRY OUT}
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
work=build-code-lm
rm -rf "$work"
mkdir -p "$work" "$out"
{
  echo "start $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch, transformers, tokenizers, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__, "cuda", torch.version.cuda)'
} 2>&1 | tee "$work/env.txt"

resume=()
[ -n "${RESUME:-}" ] && resume=(--resume "$RESUME")
# shellcheck disable=SC2086
python3 tools/code_lm/train.py --train_data "$carry/train-*.bin.xz" \
  --heldout_data "$carry/heldout.bin.xz" --tokenizer "$carry/tokenizer.json" --out "$work" \
  --total_budget_s "${TOTAL_S:-490}" --budget_s 100000 \
  --stages "${STAGES:-2048:0.4,4096:0.2,8192:0.15,16384:0.25}" \
  --decay_fraction "${DECAY:-0.2}" "${resume[@]}" ${EXTRA:-} 2>&1 | tee -a "$work/log.txt"
train_status=${PIPESTATUS[0]}

golden_status=1
if [ -f "$work/model/config.json" ]; then
  python3 tools/code_lm/golden.py --model "$work/model" --impl transformers \
    --ids tests/fixtures/code_lm/heldout_sample.ids --text tests/fixtures/code_lm/heldout_sample.c \
    --prompt_tokens 1024 --new_tokens 24 --out "$work/model/golden.json" 2>&1 |
    tee -a "$work/log.txt"
  golden_status=${PIPESTATUS[0]}
fi

cp "$work"/model/model*.safetensors "$out/" 2>/dev/null
(cd "$work" && cp model/config.json model/tokenizer.json model/train_state.json . 2>/dev/null;
 cp model/model.safetensors.index.json model/golden.json . 2>/dev/null;
 tar -cf result.tar --ignore-failed-read config.json model.safetensors.index.json tokenizer.json \
   golden.json train_state.json curve.csv eval.json train.log env.txt 2>/dev/null)
cp "$work/result.tar" "$out/"
cp "$work/log.txt" "$out/log.txt"
ls -l "$out"
echo "train exit $train_status, golden exit $golden_status"
[ "$train_status" -eq 0 ] && [ "$golden_status" -eq 0 ]
