#!/usr/bin/env bash
# Fails if any C++/CUDA source differs from the repository's .clang-format style.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.h' '*.cc' '*.cu' '*.cuh')
[ ${#files[@]} -eq 0 ] && exit 0
if ! clang-format --dry-run --Werror "${files[@]}" 2>/tmp/mpa-format.log; then
  echo "clang-format: these files are not formatted (run clang-format -i on them):"
  grep -o '^[^:]*\.\(h\|cc\|cu\|cuh\)' /tmp/mpa-format.log | sort -u
  exit 1
fi
echo "clang-format: ${#files[@]} files clean"
