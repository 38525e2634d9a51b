#!/usr/bin/env bash
# bench_loader.sh — data_ms against step time for the small config's shapes
# (configs/small.ini: G = 8, T = 256), with and without the reader thread.
#
#   tests/bench_loader.sh [BUILD_DIR] [STEP_MS]     (default: build, measured)
#
# STEP_MS is the step time data_ms is compared with. By default it is
# measured here with `strata bench --config configs/small.ini` (forward,
# backward and AdamW of the real model, on this machine, now); the loader
# is then run against a busy-wait of min(STEP_MS, 100) ms per step, a
# harder target than the real step (less time to read ahead), and data_ms is
# shown against both. Issue 3's target: data_ms < 1 % of the step time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/.."
build="${1:-$src/build}"
[[ -f "$build/libstrata_core.a" ]] || {
    echo "bench_loader: no $build/libstrata_core.a (build first, or pass the build dir)" >&2
    exit 1
}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

step_ms="${2:-}"
if [[ -z "$step_ms" ]]; then
    echo "measuring the small config's step: strata bench --config configs/small.ini ..."
    "$build/strata" bench --config "$src/configs/small.ini" >"$work/bench.txt" 2>&1 || {
        cat "$work/bench.txt" >&2
        exit 1
    }
    grep -E '^(model|step|throughput)' "$work/bench.txt" | sed 's/^/  /'
    step_ms=$(awk '/^step/ { print $3 }' "$work/bench.txt")
fi
sim_ms=$(awk -v s="$step_ms" 'BEGIN { print (s < 100 ? s : 100) }')

# Only the loader's objects come out of the archive: HDF5, zlib, pthreads, libm.
cc -O2 -std=c17 -D_GNU_SOURCE -I"$src/include" $(pkg-config --cflags hdf5-serial) \
    "$here/bench_loader.c" "$build/libstrata_core.a" $(pkg-config --libs hdf5-serial) -lz \
    -lpthread -lm -o "$work/bench_loader"
"$work/bench_loader" "$work" "$sim_ms" 400 | tee "$work/out.txt"
awk -v step="$step_ms" '/read ahead/ {
        for (i = 1; i <= NF; i++) if ($i == "data_ms") mean = $(i + 1)
        printf "  => data_ms %.4f ms = %.5f%% of the small config step of %.1f ms (target < 1%%)\n",
               mean, 100 * mean / step, step
    }' "$work/out.txt"
