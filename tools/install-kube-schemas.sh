#!/usr/bin/env bash
# Installs what the chart test (tests/deploy/helm_chart_test.sh) validates rendered manifests with,
# offline: the Kubernetes 1.27 API schemas as compiled validators (npm kubernetes-models, and
# @kubernetes-models/prometheus-operator for the ServiceMonitor) and a YAML parser (npm yaml), into
# third_party_data/kube-schemas (git-ignored). tests/deploy/validate_manifests.mjs uses them.
# Safe to run twice.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="$here/third_party_data/kube-schemas"
packages=(kubernetes-models@5.1.0 @kubernetes-models/prometheus-operator@6.0.0 yaml@2.9.1)
if [ -f "$dest/.installed" ] && [ "$(cat "$dest/.installed")" = "${packages[*]}" ]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "install-kube-schemas: npm not found" >&2
  exit 1
fi
mkdir -p "$dest"
(cd "$dest" && npm install --silent --no-audit --no-fund --prefix . "${packages[@]}" >/dev/null 2>&1)
echo "${packages[*]}" >"$dest/.installed"
echo "install-kube-schemas: ${packages[*]} in $dest"
