#!/usr/bin/env bash
# Copies the shared libraries that BINARY... load (as ldd resolves them on the build machine) into
# DEST_DIR, so a slim runtime image needs only DEST_DIR on LD_LIBRARY_PATH. Fails if ldd cannot
# resolve a library.
# Left out, because every runtime base image has them (at least as new): glibc's libraries and
# loader, libstdc++, libgcc_s, the vDSO; and CUDA's libraries under /usr/local/cuda*, which the
# nvidia/cuda runtime image provides at the version the build used.
# Usage: collect-runtime-libs.sh DEST_DIR BINARY...
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 DEST_DIR BINARY..." >&2
  exit 2
fi
dest=$1
shift
mkdir -p "$dest"
base_libs='^(ld-linux.*|libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil|libanl|libnsl|libstdc\+\+|libgcc_s)\.so'
status=0
for binary in "$@"; do
  # Lines look like "libfoo.so.1 => /usr/lib/x86_64-linux-gnu/libfoo.so.1 (0x...)" or
  # "libfoo.so.1 => not found"; the vDSO and the loader have no "=>".
  while read -r name path; do
    if [ "$path" = not ]; then
      echo "collect-runtime-libs: $binary needs $name, which ldd cannot find" >&2
      status=1
      continue
    fi
    if [[ $name =~ $base_libs ]] || [[ $path == /usr/local/cuda* ]]; then
      continue
    fi
    cp -L "$path" "$dest/$name"
  done < <(ldd "$binary" | awk '$2 == "=>" { print $1, $3 }')
done
echo "collect-runtime-libs: $(ls "$dest" | wc -l) libraries in $dest"
exit $status
