#!/usr/bin/env bash
# Sanitizer runs of the tests on the CPU (part of tools/run-tests.sh). Each builds a CPU-only tree
# (-DMPA_WITH_CUDA=OFF, -O1 -g, no benchmark programs) with gcc:
#   address  AddressSanitizer + UndefinedBehaviorSanitizer (LeakSanitizer included): every CPU
#            test (ctest -LE gpu) in $MPA_ASAN_BUILD_DIR (build-asan). The end-to-end tests start
#            that tree's mpa_server, mpa_client and mpa_generate, so those run instrumented too.
#   thread   ThreadSanitizer: the tests of our own concurrency code that run without gRPC's
#            runtime, each several times (fresh random seeds): the engine thread and its command
#            queue, cancellation, TTL and drain against a scripted engine (decode_scheduler_test),
#            sessions, API keys, the metrics observer, request parsing, TLS file checks, and the
#            tokenizer's shared word cache under concurrent encodes, in $MPA_TSAN_BUILD_DIR
#            (build-tsan). Not the gRPC edge: gRPC, protobuf and Abseil come from Debian without
#            TSan, and gRPC's C++ API is header templates compiled into our code but ordered by its
#            uninstrumented core, so every callback handed between gRPC's threads looks like a
#            race (a trial over all of tests/server gave ~1,900 reports, ~120 distinct pairs of top
#            frames, all of that shape, our reactors' frames in many: no suppression could tell them
#            from a race of ours). The gRPC edge is covered by the ASan run of the end-to-end
#            tests and by bench/server_soak.cc. tools/tsan.supp holds what remains benign.
# Every process (a test, or a server or client a test started) writes its reports to a folder
# through the sanitizers' log_path: a report from a child process fails the run even where the
# test that started it would not notice. Reports are printed and the script exits 1.
#
# Environment: MPA_SANITIZERS (default "address thread"), MPA_JOBS, MPA_ASAN_BUILD_DIR,
# MPA_TSAN_BUILD_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${MPA_JOBS:-$(nproc)}
sanitizers=${MPA_SANITIZERS-address thread}

# Configures and builds a sanitizer tree: configure DIR SANITIZERS [TARGET...] (none: all).
build_tree() {
  local dir=$1 sanitize=$2
  shift 2
  CC=gcc CXX=g++ cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMPA_WITH_CUDA=OFF \
    -DMPA_BUILD_BENCH=OFF "-DMPA_SANITIZE=$sanitize" >/dev/null
  if [ $# -eq 0 ]; then
    cmake --build "$dir" -j "$jobs"
  else
    cmake --build "$dir" -j "$jobs" --target "$@"
  fi
}

# Prints every report under LOG_DIR and fails if there is one.
check_reports() {
  local name=$1 logs=$2
  if compgen -G "$logs/*" >/dev/null; then
    for f in "$logs"/*; do
      echo "---- $f"
      head -120 "$f"
    done
    echo "sanitizers: $name: $(ls "$logs" | wc -l) process(es) reported errors (above)"
    return 1
  fi
  echo "sanitizers: $name: no reports"
}

status=0
for sanitizer in $sanitizers; do
  start=$(date +%s)
  case $sanitizer in
    address)
      dir=${MPA_ASAN_BUILD_DIR:-build-asan}
      build_tree "$dir" address,undefined
      logs=$(mktemp -d)
      # detect_leaks: LeakSanitizer at every process's exit. abort_on_error off: a report ends
      # the process with exit status 1 (not a core dump).
      export ASAN_OPTIONS="log_path=$logs/asan:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=0:check_initialization_order=1"
      export UBSAN_OPTIONS="log_path=$logs/ubsan:print_stacktrace=1:halt_on_error=1"
      export LSAN_OPTIONS="suppressions=$root/tools/lsan.supp:print_suppressions=0"
      rc=0
      ctest --test-dir "$dir" --output-on-failure -j "$jobs" -LE gpu --timeout 900 || rc=$?
      unset ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS
      check_reports "ASan+UBSan" "$logs" || rc=1
      rm -rf "$logs"
      ;;
    thread)
      dir=${MPA_TSAN_BUILD_DIR:-build-tsan}
      # test binary and gtest arguments (several rounds where the test draws fresh random seeds)
      runs=("decode_scheduler_test --gtest_repeat=4" "session_manager_test --gtest_repeat=4"
        "api_keys_test" "metrics_test --gtest_repeat=4" "request_parser_test"
        "tls_credentials_test" "tokenizer_test --gtest_filter=*Concurrent* --gtest_repeat=4")
      build_tree "$dir" thread $(for r in "${runs[@]}"; do echo "${r%% *}"; done)
      logs=$(mktemp -d)
      # history_size: longer access histories, so both stacks of a race are shown.
      export TSAN_OPTIONS="log_path=$logs/tsan:halt_on_error=1:second_deadlock_stack=1:history_size=4:suppressions=$root/tools/tsan.supp"
      rc=0
      for r in "${runs[@]}"; do
        read -r -a args <<<"$r"
        if ! (cd "$dir" && "bin/${args[0]}" "${args[@]:1}" --gtest_brief=1 >"$logs/${args[0]}.out" 2>&1); then
          tail -40 "$logs/${args[0]}.out"
          echo "sanitizers: TSan: ${args[0]} FAILED"
          rc=1
        fi
        rm -f "$logs/${args[0]}.out"
      done
      unset TSAN_OPTIONS
      check_reports "TSan" "$logs" || rc=1
      rm -rf "$logs"
      ;;
    *)
      echo "sanitizers: unknown sanitizer '$sanitizer' (address, thread)"
      exit 2
      ;;
  esac
  echo "sanitizers: $sanitizer: $([ $rc = 0 ] && echo PASS || echo FAIL) in $(($(date +%s) - start)) s"
  [ $rc = 0 ] || status=1
done
exit $status
