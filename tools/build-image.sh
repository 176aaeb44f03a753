#!/usr/bin/env bash
# Builds the `cpu` target of deploy/Dockerfile with podman (Debian's package; podman builds
# through buildah's library) on a machine that reaches no image registry, then runs the image:
#
#  1. base: a Debian 12 root file system made here with debootstrap (minbase, plus the host's
#     apt sources where it is Debian 12 too), imported and tagged as the two bases the
#     Dockerfile names, docker.io/library/debian:12 and debian:12-slim (the same file system:
#     this is the reproducible part of what the official images hold);
#  2. build: podman build --target cpu --pull=never (the `cuda` stages are never built, so their
#     nvidia/cuda bases are never needed), the build stages using the host's network for apt;
#  3. run: the image with the model folder mounted read-only, on the host's network (loopback
#     ports): the server must run as uid 10001, answer grpc.health.v1 SERVING (its own
#     mpa_client health), stream a generation (mpa_client generate) and serve /metrics, find its
#     model mount read-only, and exit 0 on SIGTERM (podman stop) after draining.
#
# Needs root (podman as root, apt-get). Installs podman, runc and debootstrap when missing.
# Prints every step; `tools/build-image.sh 2>&1 | tee deploy/image-check-cpu.log` keeps the
# record (the committed one is that). About 5 minutes on 2 cores once the base exists (apt in the
# deps stage, mpa_server compiled in the build stage), plus about 1 for debootstrap: not part of
# CI (tools/run-tests.sh), which it would lengthen for a check that needs root, podman and apt.
#
# Environment: MPA_MODEL (the model folder, default ../shared/models/stories260K beside the
# checkout), MPA_IMAGE (tag, default multipole/mpa-server:0.1.0), MPA_IMAGE_WORK (where the base
# file system is made, default /var/tmp/multipole-image-base), MPA_IMAGE_REBUILD_BASE=1 (make
# the base again even if podman has it), MPA_IMAGE_NO_CACHE=1 (build every stage again).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
image=${MPA_IMAGE:-multipole/mpa-server:0.1.0}
model=${MPA_MODEL:-$root/../shared/models/stories260K}
work=${MPA_IMAGE_WORK:-/var/tmp/multipole-image-base}
container=mpa-image-check-$$
step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
fail() {
  echo "build-image: FAIL: $*" >&2
  exit 1
}

step "host"
uname -srm
grep PRETTY_NAME /etc/os-release || true
echo "cores: $(nproc)"
if git -C "$root" rev-parse HEAD >/dev/null 2>&1; then
  echo "source: commit $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- . ':!deploy/image-check-cpu.log' || echo ' with uncommitted changes')"
fi
[ "$(id -u)" = 0 ] || fail "run as root (podman as root, apt-get)"
[ -f "$model/config.json" ] || fail "no model at $model (set MPA_MODEL)"
model=$(cd "$model" && pwd)

step "tools"
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v runc >/dev/null || missing+=(runc)
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
# Containers (the build's RUN steps too) start with runc and resource limits no higher than this
# shell's. On the machine this was written on, podman's defaults fail: crun refuses its cgroups
# ("cgroups in hybrid mode not supported": cgroup v1 controllers with a cgroup2 hierarchy mounted
# beside them), and podman asks for open-file and process limits above the ones the kernel lets
# even root raise ("setrlimit RLIMIT_NOFILE: Operation not permitted").
podman_run_flags=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
podman() { command podman --runtime runc "$@"; }
podman --version
buildah --version 2>/dev/null || echo "(buildah's command is not installed; podman build uses its library)"
debootstrap --version
runc --version | head -1
podman info --format 'storage driver {{.Store.GraphDriverName}}, cgroups {{.Host.CgroupsVersion}}'

step "base images"
if [ "${MPA_IMAGE_REBUILD_BASE:-0}" = 1 ] || ! podman image exists docker.io/library/debian:12; then
  rm -rf "$work"
  mkdir -p "$work"
  # minbase: dpkg, apt and the essential packages, as the official debian images.
  debootstrap --variant=minbase bookworm "$work/rootfs" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log"; fail "debootstrap"; }
  tail -1 "$work/debootstrap.log"
  # The host's apt sources (updates and security too) where the host is Debian 12 as well;
  # debootstrap writes the release alone.
  if grep -q '^VERSION_CODENAME=bookworm' /etc/os-release && [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$work/rootfs/etc/apt/sources.list.d/debian.sources"
    rm -f "$work/rootfs/etc/apt/sources.list"
  fi
  rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin
  tar -C "$work/rootfs" --numeric-owner -c . |
    podman import --change 'CMD ["bash"]' - docker.io/library/debian:12
  podman tag docker.io/library/debian:12 docker.io/library/debian:12-slim
  rm -rf "$work/rootfs"
fi
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'library/debian' || fail "no base"

step "build: podman build --target cpu"
start=$(date +%s)
podman rmi -f "$image" >/dev/null 2>&1 || true
build_log=$(mktemp)
status=0
cache_flags=()
[ "${MPA_IMAGE_NO_CACHE:-0}" = 1 ] && cache_flags=(--no-cache)
podman build "${podman_run_flags[@]}" "${cache_flags[@]}" --pull=never --network=host -f "$root/deploy/Dockerfile" --target cpu -t "$image" \
  "$root" >"$build_log" 2>&1 || status=$?
# apt's and dpkg's progress lines left out.
grep -vE '^(Get|Hit|Ign|Fetched|Selecting|Preparing|Unpacking|Setting up|Processing|Reading|\(Reading) ' \
  "$build_log" || true
rm -f "$build_log"
[ "$status" = 0 ] || fail "podman build exited with $status"
podman image exists "$image" || fail "the build produced no image $image"
echo "built $image in $(($(date +%s) - start)) s"
podman images --format '{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' "$image"
podman image inspect --format 'user {{.Config.User}}, entrypoint {{.Config.Entrypoint}}, cmd {{.Config.Cmd}}, exposed {{.Config.ExposedPorts}}' "$image"

step "run"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() { podman rm -f "$container" >/dev/null 2>&1 || true; }
trap cleanup EXIT
podman run "${podman_run_flags[@]}" -d --name "$container" --network=host \
  -v "$model:/models/stories260K:ro" "$image" \
  --model=/models/stories260K --address="127.0.0.1:$port" \
  --metrics_address="127.0.0.1:$metrics_port" --drain_timeout=20s
for _ in $(seq 1 120); do
  podman logs "$container" 2>&1 | grep -q 'listening on' && break
  [ "$(podman inspect --format '{{.State.Running}}' "$container")" = true ] ||
    { podman logs "$container"; fail "the container exited"; }
  sleep 0.5
done
podman logs "$container" 2>&1
echo "-- process: $(podman exec "$container" id)"
[ "$(podman exec "$container" id -u)" = 10001 ] || fail "the server does not run as uid 10001"
podman top "$container" user pid args
echo "-- health"
podman exec "$container" mpa_client health --server="127.0.0.1:$port" || fail "not SERVING"
echo "-- generation (streamed)"
podman exec "$container" mpa_client generate --server="127.0.0.1:$port" \
  --prompt="Once upon a time" --max_new_tokens=48 --temperature=0 || fail "generation"
echo "-- greedy token ids from BOS (stories260K's README lists them: 403 407 261 378 432 383 286 261)"
podman exec "$container" mpa_client generate --server="127.0.0.1:$port" --prompt_ids=1 \
  --max_new_tokens=8 --temperature=0 --output=ids || fail "generation (ids)"
echo "-- metrics"
python3 - "$metrics_port" <<'PY' || fail "metrics"
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
lines = [l for l in text.splitlines() if l.startswith(("mpa_generated_tokens_total", "mpa_build_info"))]
print("\n".join(lines))
sys.exit(0 if any(l.startswith("mpa_generated_tokens_total") and float(l.split()[-1]) >= 56 for l in lines) else 1)
PY
echo "-- the model mount is read-only"
if podman exec "$container" touch /models/stories260K/written-by-container 2>&1; then
  fail "the container could write to its model mount"
fi
echo "-- SIGTERM (podman stop)"
stopped=$(date +%s)
podman stop -t 60 "$container" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
podman logs "$container" 2>&1 | tail -5
echo "exit code $code after $(($(date +%s) - stopped)) s"
[ "$code" = 0 ] || fail "exit code $code on SIGTERM"
step "PASS: $image built from deploy/Dockerfile (target cpu) and run"
