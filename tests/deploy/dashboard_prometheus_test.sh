#!/usr/bin/env bash
# The Grafana dashboard against real parts: mpa_server on stories260K (multipole attention with
# knobs small enough that a 512-token model clusters and re-clusters), a real Prometheus scraping
# its /metrics every second, load from mpa_client bench (multipole and dense requests) and one
# refused request; then every dashboard query, as Grafana sends it, must answer with data.
# Exits 77 (skipped) without the prometheus binary (Debian package prometheus) or the model.
# Usage: dashboard_prometheus_test.sh BIN_DIR MODEL_DIR REPO_ROOT
set -euo pipefail
bin=${1:?usage: dashboard_prometheus_test.sh BIN_DIR MODEL_DIR REPO_ROOT}
model=${2:?}
root=${3:?}
if ! command -v prometheus >/dev/null; then
  echo "SKIP: the prometheus binary is not installed (Debian package prometheus)"
  exit 77
fi
if [ ! -f "$model/config.json" ]; then
  echo "SKIP: no model at $model"
  exit 77
fi
work=$(mktemp -d)
server=""
prometheus_pid=""
cleanup() {
  [ -n "$server" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null
  [ -n "$prometheus_pid" ] && kill -TERM "$prometheus_pid" 2>/dev/null &&
    wait "$prometheus_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for log in "$work"/*.log; do
    echo "--- $log" >&2
    tail -20 "$log" >&2
  done
  exit 1
}
# Waits up to 30 s for a command to succeed.
wait_for() {
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

"$bin/mpa_server" --model="$model" --address=127.0.0.1:0 --metrics_address=127.0.0.1:0 \
  --attention=multipole --token_budget=32 --cluster_ratio=4 --cluster_interval=16 \
  --min_clustered_tokens=32 --sink_tokens=4 --threads=1 >"$work/server.log" 2>&1 &
server=$!
wait_for grep -q '^mpa_server metrics on ' "$work/server.log" || fail "mpa_server did not start"
wait_for grep -q '^mpa_server listening on ' "$work/server.log" || fail "mpa_server did not listen"
address=$(sed -n 's/^mpa_server listening on //p' "$work/server.log")
metrics=$(sed -n 's/^mpa_server metrics on //p' "$work/server.log")

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: multipole
    static_configs:
      - targets: ["$metrics"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$port" >"$work/prometheus.log" 2>&1 &
prometheus_pid=$!
url="http://127.0.0.1:$port"
scraped() {
  python3 - "$url" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/api/v1/query?query=up%7Bjob%3D%22multipole%22%7D") as r:
    result = json.load(r)["data"]["result"]
sys.exit(0 if result and result[0]["value"][1] == "1" else 1)
EOF
}
wait_for scraped || fail "Prometheus did not scrape mpa_server"

"$bin/mpa_client" bench --server="$address" --concurrency=4 --prompt_tokens=200 \
  --output_tokens=200 --requests=8 >"$work/bench-multipole.log" 2>&1 || fail "bench (multipole)"
"$bin/mpa_client" bench --server="$address" --concurrency=2 --prompt_tokens=64 \
  --output_tokens=64 --requests=4 --attention=dense >"$work/bench-dense.log" 2>&1 ||
  fail "bench (dense)"
# A refused request: an unknown session (NOT_FOUND).
if "$bin/mpa_client" generate --server="$address" --session=s-unknown --prompt_ids=1 \
  --max_new_tokens=2 >"$work/refused.log" 2>&1; then
  fail "a Generate on an unknown session succeeded"
fi
# Wait until Prometheus has scraped all 13 finished calls (8 + 4 + the refused one), then for two
# more scrapes, so every rate has samples after the last increase.
all_scraped() {
  python3 - "$url" <<'EOF'
import json, sys, urllib.parse, urllib.request
query = urllib.parse.urlencode({"query": 'sum(mpa_requests_total{job="multipole"})'})
with urllib.request.urlopen(sys.argv[1] + "/api/v1/query?" + query) as r:
    result = json.load(r)["data"]["result"]
sys.exit(0 if result and float(result[0]["value"][1]) >= 13 else 1)
EOF
}
wait_for all_scraped || fail "Prometheus did not see the 13 finished calls"
sleep 2
python3 "$root/tests/deploy/deploy_checks.py" live "$url" multipole \
  "$root/deploy/grafana/multipole-dashboard.json" || fail "dashboard queries"
echo "dashboard_prometheus: PASS"
