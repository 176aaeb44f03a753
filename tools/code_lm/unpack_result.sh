#!/usr/bin/env bash
# Turns what device_train.sh left in OUT (weight shards, result.tar) back into a model folder:
#   tools/code_lm/unpack_result.sh FETCHED_DIR DEST
# DEST gets config.json, the safetensors (and index), tokenizer.json, golden.json and
# train_state.json (what RESUME needs to continue), plus curve.csv, eval.json, train.log and
# env.txt of the chunk; tools/code_lm/report.py DEST writes the training report from those.
set -euo pipefail
src=${1:?usage: unpack_result.sh FETCHED_DIR DEST}
dest=${2:?usage: unpack_result.sh FETCHED_DIR DEST}
mkdir -p "$dest"
rm -f "$dest"/model*.safetensors "$dest"/model.safetensors.index.json
cp "$src"/model*.safetensors "$dest/"
tar -xf "$src/result.tar" -C "$dest"
for f in config.json tokenizer.json train_state.json; do
  [ -f "$dest/$f" ] || { echo "unpack_result.sh: $f missing from result.tar" >&2; exit 1; }
done
ls -l "$dest"
