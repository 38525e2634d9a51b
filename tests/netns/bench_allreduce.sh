#!/usr/bin/env bash
# MPI_Allreduce latency and bandwidth, 2 ranks, three ways:
#   2 hosts, TCP    one rank on each of 2 namespace hosts (veth + bridge)
#   1 host, TCP     2 ranks on one namespace host, btl tcp (loopback path)
#   1 host, shm     2 ranks on one namespace host, btl vader (shared memory)
# with the reference benchmark ../shared/bench/allreduce_bw.c (copied into the
# cluster's state directory and built there; not part of the repository).
# Prints a markdown table: median latency at 4 KiB (us), bus bandwidth at
# 1 MiB, 16 MiB and 128 MiB (GB/s; busbw = algbw for 2 ranks).
#
#   tests/netns/bench_allreduce.sh [reps]       (default 5 samples a size)
#
# Brings up its own 2-host cluster (prefix STRATA_NETNS_PREFIX, default
# strata-bench) and tears it down on exit. Needs root. The benchmark source is
# found at STRATA_BENCH_SRC, default <repo>/../shared/bench/allreduce_bw.c.
# Takes about a minute; on a shared 2-core machine the figures are noisy: run
# it when the machine is quiet, and compare the rows, not the absolute values.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
export STRATA_NETNS_PREFIX=${STRATA_NETNS_PREFIX:-strata-bench}
export STRATA_NETNS_DIR=${STRATA_NETNS_DIR:-/tmp/$STRATA_NETNS_PREFIX-netns}
BENCH=${STRATA_BENCH_SRC:-$SRC/../shared/bench/allreduce_bw.c}
REPS=${1:-5}
C=$HERE/cluster.sh
P=$STRATA_NETNS_PREFIX

[[ -r $BENCH ]] || { echo "bench_allreduce.sh: no benchmark source at $BENCH (set STRATA_BENCH_SRC)" >&2; exit 1; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

trap '"$C" down >/dev/null 2>&1 || true' EXIT
"$C" down >/dev/null 2>&1 || true
"$C" up 2
cp "$BENCH" "$STRATA_NETNS_DIR/allreduce_bw.c"
mpicc -O2 -o "$STRATA_NETNS_DIR/bin/allreduce_bw" "$STRATA_NETNS_DIR/allreduce_bw.c"

SIZES=(4096 1048576 16777216 134217728)
declare -A LAT BW
run() { # NAME mpirun-args...
    local name=$1 size line
    shift
    for size in "${SIZES[@]}"; do
        line=$(timeout 300 "$C" mpirun -np 2 "$@" "$STRATA_NETNS_DIR/bin/allreduce_bw" "$size" "$size" "$REPS" 2>&1 |
            awk -v s="$size" '$1 == s {print} /CHECK FAILED/ {print "FAILED"}')
        [[ -n $line && $line != *FAILED* ]] || { echo "bench_allreduce.sh: $name, $size bytes: no result" >&2; exit 1; }
        read -r _ lat _ _ _ bus <<< "$line"
        LAT[$name,$size]=$lat
        BW[$name,$size]=$bus
        echo "  $name: $size bytes: lat ${lat} us, busbw ${bus} GB/s" >&2
    done
}
run "2 hosts, TCP (veth+bridge)" --host "$P-h0:1,$P-h1:1"
run "1 host, TCP (loopback)" --host "$P-h0:2"
run "1 host, shm (vader)" --host "$P-h0:2" --mca btl vader,self

echo
echo "MPI_Allreduce, 2 ranks, MPI_FLOAT sum, out-of-place; median of $REPS samples ($(date -u +%F), $(getconf _NPROCESSORS_ONLN) CPUs, load $(cut -d" " -f1 /proc/loadavg))"
echo
echo "| ranks | latency 4 KiB (us) | busbw 1 MiB (GB/s) | busbw 16 MiB (GB/s) | busbw 128 MiB (GB/s) |"
echo "| --- | --- | --- | --- | --- |"
for name in "2 hosts, TCP (veth+bridge)" "1 host, TCP (loopback)" "1 host, shm (vader)"; do
    echo "| $name | ${LAT[$name,4096]} | ${BW[$name,1048576]} | ${BW[$name,16777216]} | ${BW[$name,134217728]} |"
done
