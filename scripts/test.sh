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
  sanitize=1
  # MPI's, OpenBLAS's and HDF5's own allocations are not strata's leaks; a
  # damaged size makes HDF5 ask for terabytes, which must fail, not abort.
  export ASAN_OPTIONS=allocator_may_return_null=1
  export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0
fi

scripts/install-deps.sh
tests/fetch_gpt2_tokenizer.sh >/dev/null
cmake -S . -B "$build" "${cmake_args[@]}"
cmake --build "$build" -j"$(nproc)"
cd "$build"
if [ -n "${sanitize:-}" ]; then
  # Unit tests with leak checking; the integration tests without it, since
  # LeakSanitizer's tracer cannot follow processes started by mpirun.
  ctest --output-on-failure --timeout 1800 -L unit "$@"
  ASAN_OPTIONS=$ASAN_OPTIONS:detect_leaks=0 ctest --output-on-failure --timeout 1800 -L integration "$@"
else
  ctest --output-on-failure --timeout 900 "$@"
fi
