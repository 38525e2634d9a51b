#!/usr/bin/env bash
# bench_ckpt.sh — checkpoint save speed against the disk's own sequential
# write speed, measured in the same sitting on the same file system.
#
#   tests/bench_ckpt.sh [BUILD_DIR] [SCRATCH_DIR] [ROUNDS]
#
# Saves a gpt2-124M checkpoint (model + Adam m + v, about 1.5 GB) with
# strata_ckpt_save (HDF5, Fletcher32, temp name, fsync, rename, directory
# fsync) and writes the same number of bytes with `dd conv=fsync`, alternating
# ROUNDS times (default 3), and prints each figure, the medians and their
# ratio. The acceptance bar (issue 5) is a ratio >= 0.5. Needs ~3.5 GB of
# free disk in SCRATCH_DIR and ~2.5 GB of memory.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-${STRATA_BUILD_DIR:-$here/build}}
scratch=${2:-${TMPDIR:-/tmp}}
rounds=${3:-3}
bin=$build/test_ckpt
[[ -x $bin ]] || { echo "bench_ckpt.sh: $bin not built" >&2; exit 2; }

work=$(mktemp -d "$scratch/strata-bench-ckpt-XXXXXX")
trap 'rm -rf "$work"' EXIT

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

save_rates=() dd_rates=() load_times=()
for ((r = 1; r <= rounds; r++)); do
    # One checkpoint per round (keep = 1 deletes the previous one).
    read -r bytes save_s load_s < <(STRATA_BENCH_CKPT=$work/ckpt STRATA_BENCH_ROUNDS=1 \
        OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$bin")
    rm -f "$work"/ckpt/ckpt-*.h5
    save_rate=$(awk -v b="$bytes" -v s="$save_s" 'BEGIN {printf "%.1f", b / s / 1e6}')

    # dd of the same size, in 16 MiB blocks, fsync'd before it reports.
    mib=$(( (bytes + (1 << 20) - 1) >> 20 ))
    sync
    t0=$(date +%s.%N)
    dd if=/dev/zero of="$work/dd.bin" bs=1M count="$mib" conv=fsync status=none
    t1=$(date +%s.%N)
    rm -f "$work/dd.bin"
    dd_rate=$(awk -v b="$((mib << 20))" -v a="$t0" -v z="$t1" 'BEGIN {printf "%.1f", b / (z - a) / 1e6}')

    printf 'round %d: checkpoint %d bytes saved in %.2f s = %s MB/s (loaded in %.2f s); dd %s MB/s\n' \
        "$r" "$bytes" "$save_s" "$save_rate" "$load_s" "$dd_rate"
    save_rates+=("$save_rate") dd_rates+=("$dd_rate") load_times+=("$load_s")
done

save_med=$(printf '%s\n' "${save_rates[@]}" | median)
dd_med=$(printf '%s\n' "${dd_rates[@]}" | median)
load_med=$(printf '%s\n' "${load_times[@]}" | median)
ratio=$(awk -v s="$save_med" -v d="$dd_med" 'BEGIN {printf "%.2f", s / d}')
echo "median: checkpoint save $save_med MB/s, dd $dd_med MB/s, ratio $ratio (bar: >= 0.50); load $load_med s"
