#!/usr/bin/env bash
# Installs what is missing, builds strata with -Werror, and runs every test.
#   scripts/test.sh              # the whole suite (what CI runs)
#   scripts/test.sh --sanitize   # the same under AddressSanitizer + UBSan
#   scripts/test.sh -R ckpt      # extra arguments go to ctest
set -euo pipefail
cd "$(dirname "$0")/.."

build=build-ci
cmake_args=(-DSTRATA_WERROR=ON)
if [ "${1:-}" = "--sanitize" ]; then
  shift
  build=build-asan
  cmake_args+=(-DSTRATA_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo)
  # MPI's and OpenBLAS's own allocations are not strata's leaks.
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
  export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0
fi

scripts/install-deps.sh
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}
tests/fetch_gpt2_tokenizer.sh >/dev/null
cmake -S . -B "$build" "${cmake_args[@]}"
cmake --build "$build" -j"$(nproc)"
cd "$build"
ctest --output-on-failure --timeout 900 "$@"
