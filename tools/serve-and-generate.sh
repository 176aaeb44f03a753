#!/usr/bin/env bash
# Starts mpa_server on MODEL on a free loopback port, streams one generation to mpa_client, and
# stops the server (SIGTERM: it drains and exits 0).
# Usage: serve-and-generate.sh BUILD_DIR MODEL_DIR
set -euo pipefail
build=$1
model=$2
log=$(mktemp)
"$build/bin/mpa_server" --model="$model" --address=127.0.0.1:0 --metrics_address=127.0.0.1:0 >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 300); do
  address=$(sed -n 's/^mpa_server listening on \(.*\)$/\1/p' "$log")
  [ -n "$address" ] && break
  if ! kill -0 $server 2>/dev/null; then cat "$log"; exit 1; fi
  sleep 0.1
done
[ -n "$address" ] || { echo "mpa_server did not start:"; cat "$log"; exit 1; }
echo "mpa_server is listening on $address; streaming a generation:"
if [ -f "$model/tokenizer.json" ]; then
  printf 'Once upon a time'
  "$build/bin/mpa_client" generate --server="$address" --prompt="Once upon a time" --max_new_tokens=200
else
  "$build/bin/mpa_client" generate --server="$address" --prompt_ids=1,2,3 --max_new_tokens=32 --output=ids
fi
