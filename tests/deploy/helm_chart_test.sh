#!/usr/bin/env bash
# Checks of deploy/ (registered in ctest by tests/deploy/CMakeLists.txt):
#   helm_chart_test.sh dashboard REPO_ROOT
#     the Grafana dashboard parses as JSON, uses only mpa_server's metric families (and a
#     histogram's _bucket/_sum/_count) with their labels, shows every required panel; with promtool
#     present, every query parses as PromQL.
#   helm_chart_test.sh chart REPO_ROOT
#     `helm lint` and `helm template` on deploy/helm/multipole with the default values, with a
#     GPU + ServiceMonitor setup (with multipole knobs for CPU-side defaults), with mutual TLS,
#     with API keys;
#     the rendered manifests carry the server's args, ports, gRPC probes (on the plaintext
#     health-only port with TLS), the TLS secret mount, drain grace period and resources; bad
#     values are refused. With router.enabled (replicaCount 3, and with autoscaling and a
#     ServiceMonitor): the router's ConfigMap holds files/haproxy.cfg (the file the router
#     end-to-end test runs) byte for byte plus one server line per StatefulSet pod, the headless
#     Service, the Services' selectors, disruption budgets, grace periods covering the drains, the
#     HPA. Every rendering is validated offline against the Kubernetes 1.27 schemas, strictly
#     (tests/deploy/validate_manifests.mjs; a broken manifest is shown to fail). Exits 77
#     (skipped) without helm (tools/install-helm.sh installs it), or after the helm checks without
#     node or the schemas (tools/install-kube-schemas.sh installs them).
set -euo pipefail
mode=${1:?usage: helm_chart_test.sh dashboard|chart REPO_ROOT}
root=$(cd "${2:?usage: helm_chart_test.sh dashboard|chart REPO_ROOT}" && pwd)
checks="$root/tests/deploy/deploy_checks.py"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

if [ "$mode" = dashboard ]; then
  dashboard="$root/deploy/grafana/multipole-dashboard.json"
  python3 -m json.tool "$dashboard" >/dev/null || fail "$dashboard is not valid JSON"
  python3 "$checks" dashboard "$root"
  if command -v promtool >/dev/null; then
    # Grafana's variables replaced by what they expand to, each query as a recording rule.
    {
      echo "groups:"
      echo "  - name: multipole-dashboard"
      echo "    rules:"
      n=0
      while IFS= read -r expr; do
        n=$((n + 1))
        expr=${expr//\$__rate_interval/1m}
        expr=${expr//\$job/.*}
        expr=${expr//\$instance/.*}
        if [[ $expr == label_values\(* ]]; then
          # A variable query: its metric selector, e.g. label_values(mpa_build_info, job).
          expr=$(sed -E 's/^label_values\((.*), *[a-z_]+\)$/\1/' <<<"$expr")
        fi
        printf '      - record: dashboard:query_%d\n        expr: %s\n' "$n" \
          "$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$expr")"
      done < <(python3 "$checks" queries "$dashboard")
    } >"$work/rules.yml"
    promtool check rules "$work/rules.yml" >"$work/promtool.log" 2>&1 ||
      { cat "$work/promtool.log" >&2; fail "promtool: a dashboard query is not valid PromQL"; }
    echo "dashboard: $(grep -c 'record:' "$work/rules.yml") queries parse as PromQL (promtool)"
  else
    echo "dashboard: promtool not found: PromQL syntax not checked"
  fi
  echo "dashboard: PASS"
  exit 0
fi

[ "$mode" = chart ] || fail "unknown mode $mode"
helm=${MPA_HELM:-}
if [ -z "$helm" ]; then
  if [ -x "$root/third_party_data/helm/bin/helm" ]; then
    helm="$root/third_party_data/helm/bin/helm"
  elif command -v helm >/dev/null; then
    helm=$(command -v helm)
  fi
fi
if [ -z "$helm" ]; then
  echo "SKIP: helm not found (bash tools/install-helm.sh installs it into third_party_data/)"
  exit 77
fi
chart="$root/deploy/helm/multipole"
echo "chart: $("$helm" version --short) on $chart"
python3 "$checks" health-bytes "$chart/files/haproxy.cfg" "$root/tools/grpc_health_check_bytes.py"

cat >"$work/gpu.yaml" <<'EOF'
gpu:
  enabled: true
metrics:
  serviceMonitor:
    enabled: true
    labels:
      release: kps
model:
  volume:
    type: persistentVolumeClaim
server:
  attention: dense
  maxKvTokens: 1048576
  # Every knob the chart knows, so each is checked to be a flag of mpa_server.
  multipole:
    cluster_ratio: 8
    levels: 2
    cluster_interval: 128
    sink_tokens: 10
    min_clustered_tokens: 256
    block_tokens: 8192
    lookup_position: 2048
    token_budget_fraction: 0.05
    centroid_keys: pre_rope_rotated_means
EOF

cat >"$work/tls.yaml" <<'EOF'
tls:
  enabled: true
  secretName: mpa-tls
  clientCaKey: ca.crt
  reloadIntervalSeconds: 300
EOF

cat >"$work/apikeys.yaml" <<'EOF'
apiKeys:
  enabled: true
  secretName: mpa-keys
  secretKey: keys.txt
  maxSessionsPerKey: 8
EOF

"$helm" lint --strict "$chart" >"$work/lint.log" 2>&1 || { cat "$work/lint.log"; fail "helm lint"; }
"$helm" lint --strict "$chart" -f "$work/apikeys.yaml" >"$work/lint.log" 2>&1 ||
  { cat "$work/lint.log"; fail "helm lint (apikeys values)"; }
"$helm" lint --strict "$chart" -f "$work/tls.yaml" >"$work/lint.log" 2>&1 ||
  { cat "$work/lint.log"; fail "helm lint (tls values)"; }
"$helm" lint --strict "$chart" -f "$work/gpu.yaml" >"$work/lint.log" 2>&1 ||
  { cat "$work/lint.log"; fail "helm lint (gpu values)"; }

cat >"$work/router.yaml" <<'EOF'
router:
  enabled: true
replicaCount: 3
EOF
cat >"$work/router-hpa.yaml" <<'EOF'
router:
  enabled: true
replicaCount: 3
autoscaling:
  enabled: true
  minReplicas: 2
  maxReplicas: 6
metrics:
  serviceMonitor:
    enabled: true
EOF
for values in router router-hpa; do
  "$helm" lint --strict "$chart" -f "$work/$values.yaml" >"$work/lint.log" 2>&1 ||
    { cat "$work/lint.log"; fail "helm lint ($values values)"; }
  "$helm" template test-release "$chart" -f "$work/$values.yaml" >"$work/$values-rendered.yaml"
done
"$helm" template test-release "$chart" >"$work/default.yaml"
python3 "$checks" manifests default "$work/default.yaml" "$root/server/server_main.cc" \
  "$root/model/config/multipole_flags.cc"
"$helm" template test-release "$chart" -f "$work/gpu.yaml" >"$work/gpu-rendered.yaml"
python3 "$checks" manifests gpu "$work/gpu-rendered.yaml" "$root/server/server_main.cc" \
  "$root/model/config/multipole_flags.cc"

"$helm" template test-release "$chart" -f "$work/tls.yaml" >"$work/tls-rendered.yaml"
python3 "$checks" manifests tls "$work/tls-rendered.yaml" "$root/server/server_main.cc" \
  "$root/model/config/multipole_flags.cc"

"$helm" template test-release "$chart" -f "$work/apikeys.yaml" >"$work/apikeys-rendered.yaml"
python3 "$checks" manifests apikeys "$work/apikeys-rendered.yaml" "$root/server/server_main.cc" \
  "$root/model/config/multipole_flags.cc"
# API keys and TLS together: both secrets mounted, both sets of flags.
"$helm" template test-release "$chart" -f "$work/apikeys.yaml" -f "$work/tls.yaml" \
  >"$work/both.yaml" || fail "helm template (apikeys + tls)"
for want in '--api_keys_file=/etc/multipole/api-keys/keys.txt' '--tls_cert=' \
  'secretName: mpa-keys' 'secretName: mpa-tls'; do
  grep -q -- "$want" "$work/both.yaml" || fail "apikeys + tls: no '$want' in the manifests"
done

# NOTES.txt renders for each model volume type (helm template does not print NOTES, so a copy of
# the chart prints them through a wrapper template).
cp -r "$chart" "$work/notes-chart"
printf 'notes: |\n{{ include "multipole/templates/NOTES.txt" . | indent 2 }}\n' \
  >"$work/notes-chart/templates/notes-rendered.yaml"
for values in "" "model.volume.type=persistentVolumeClaim,replicaCount=2" \
  "model.volume.type=hostPath,model.volume.hostPath=/srv/models,metrics.enabled=false" \
  "router.enabled=true,replicaCount=3" "router.enabled=true,autoscaling.enabled=true"; do
  "$helm" template test-release "$work/notes-chart" --show-only templates/notes-rendered.yaml \
    ${values:+--set "$values"} >"$work/notes.txt" || fail "NOTES.txt with '$values'"
  grep -q -- '--server=127.0.0.1:50051' "$work/notes.txt" || fail "NOTES.txt with '$values'"
  if [[ $values == router* ]]; then
    grep -q 'x-session-id' "$work/notes.txt" || fail "NOTES.txt with '$values': no routing"
  fi
done
for values in "tls.enabled=true,tls.secretName=mpa-tls" \
  "tls.enabled=true,tls.secretName=mpa-tls,tls.clientCaKey=ca.crt,tls.reloadIntervalSeconds=0"; do
  "$helm" template test-release "$work/notes-chart" --show-only templates/notes-rendered.yaml \
    --set "$values" >"$work/notes.txt" || fail "NOTES.txt with '$values'"
  grep -q -- '--tls_ca=' "$work/notes.txt" || fail "NOTES.txt with '$values': no --tls_ca"
  if [[ $values == *clientCaKey* ]]; then
    grep -q -- '--tls_cert=' "$work/notes.txt" || fail "NOTES.txt with '$values': no --tls_cert"
  fi
done

"$helm" template test-release "$work/notes-chart" --show-only templates/notes-rendered.yaml \
  -f "$work/apikeys.yaml" >"$work/notes.txt" || fail "NOTES.txt with apikeys"
grep -q 'MPA_API_KEY' "$work/notes.txt" || fail "NOTES.txt with apikeys: no MPA_API_KEY"

# Values the chart must refuse, each with a message that names the value.
refuse() {
  local expect=$1
  shift
  if "$helm" template test-release "$chart" "$@" >"$work/refused.log" 2>&1; then
    fail "helm template $* rendered; it should be refused"
  fi
  grep -q -- "$expect" "$work/refused.log" || { cat "$work/refused.log"; fail "message for $*"; }
}
refuse "terminationGracePeriodSeconds (30) must exceed" --set terminationGracePeriodSeconds=30
refuse "server.attention must be one of" --set server.attention=sparse
refuse "model.volume.hostPath must name" --set model.volume.type=hostPath
refuse "model.volume.type must be one of" --set model.volume.type=nfs
refuse "server.multipole.clusterRatio is not a flag" --set server.multipole.clusterRatio=8
refuse "server.multipole.centroid_keys is not available with gpu.enabled" --set gpu.enabled=true \
  --set server.attention=exact-only --set server.multipole.centroid_keys=pre_rope
refuse "tls.secretName must name" --set tls.enabled=true
refuse "tls.clientCaKey needs tls.enabled" --set tls.clientCaKey=ca.crt
refuse "probes.healthPort (50051) must differ" --set tls.enabled=true --set tls.secretName=s \
  --set probes.healthPort=50051
refuse "apiKeys.secretName must name" --set apiKeys.enabled=true
refuse "apiKeys.maxSessionsPerKey must be -1" --set apiKeys.enabled=true \
  --set apiKeys.secretName=k --set apiKeys.maxSessionsPerKey=0
refuse "apiKeys.mountPath must differ" --set apiKeys.enabled=true --set apiKeys.secretName=k \
  --set tls.enabled=true --set tls.secretName=s --set apiKeys.mountPath=/etc/multipole/tls/
"$helm" template test-release "$chart" --set gpu.enabled=true --set server.attention=multipole \
  >"$work/gpu-multipole.yaml" 2>&1 || { cat "$work/gpu-multipole.yaml"; fail "gpu + multipole"; }
grep -q -- '--attention=multipole' "$work/gpu-multipole.yaml" || fail "gpu + multipole flag"
# The GPU engine serves Quest and two cluster levels too.
"$helm" template test-release "$chart" --set gpu.enabled=true --set server.attention=quest \
  >"$work/gpu-quest.yaml" 2>&1 || { cat "$work/gpu-quest.yaml"; fail "gpu + quest"; }
grep -q -- '--attention=quest' "$work/gpu-quest.yaml" || fail "gpu + quest flag"
"$helm" template test-release "$chart" --set gpu.enabled=true --set server.attention=multipole \
  --set server.multipole.levels=2 >"$work/gpu-two-levels.yaml" 2>&1 ||
  { cat "$work/gpu-two-levels.yaml"; fail "gpu + two levels"; }
grep -q -- '--levels=2' "$work/gpu-two-levels.yaml" || fail "gpu + two levels flag"
refuse "router.enabled needs tls.enabled=false" -f "$work/router.yaml" --set tls.enabled=true \
  --set tls.secretName=s
refuse "autoscaling.maxReplicas (1) must be at least autoscaling.minReplicas (2)" \
  --set autoscaling.enabled=true --set autoscaling.maxReplicas=1
# Several replicas without the router get a disruption budget; one replica none.
"$helm" template test-release "$chart" --set replicaCount=2 >"$work/two.yaml"
grep -q '^kind: PodDisruptionBudget' "$work/two.yaml" || fail "no PodDisruptionBudget for 2 replicas"
if grep -q '^kind: PodDisruptionBudget' "$work/default.yaml"; then
  fail "a PodDisruptionBudget for 1 replica"
fi

# Offline schema validation of every rendering, and the router's manifests in detail.
modules="$root/third_party_data/kube-schemas/node_modules"
if ! command -v node >/dev/null || [ ! -d "$modules/kubernetes-models" ]; then
  echo "chart: helm checks PASS"
  echo "SKIP: Kubernetes schemas not installed (bash tools/install-kube-schemas.sh): manifests not validated"
  exit 77
fi
validate="$root/tests/deploy/validate_manifests.mjs"
for rendered in default gpu-rendered tls-rendered router-rendered router-hpa-rendered two \
  gpu-multipole; do
  node "$validate" "$modules" --json "$work/$rendered.json" "$work/$rendered.yaml" ||
    fail "$rendered.yaml does not validate"
done
shared="$chart/files/haproxy.cfg"
python3 "$checks" router router "$work/router-rendered.json" "$shared" 3 0
python3 "$checks" router hpa "$work/router-hpa-rendered.json" "$shared" 6 1
# The validator fails where it should: an unknown field, a wrong type.
sed -e 's/^      automountServiceAccountToken: false/&\n      automountServiceAcountToken: false/' \
  -e 's/^  replicas: 2$/  replicas: "2"/' "$work/router-rendered.yaml" >"$work/broken.yaml"
if node "$validate" "$modules" "$work/broken.yaml" >"$work/broken.log" 2>&1; then
  fail "the schema validation passed a broken manifest"
fi
if ! grep -q 'automountServiceAcountToken is not a field' "$work/broken.log" ||
  ! grep -q '/spec/replicas must be integer' "$work/broken.log"; then
  cat "$work/broken.log"
  fail "the schema validation missed a problem of the broken manifest"
fi
echo "chart: PASS"
