#!/usr/bin/env bash
# strata's step time on 3 namespace hosts (TCP across the switch) against 3
# ranks on one host (shared memory, then TCP), same model and global batch.
#   tests/netns/bench_step.sh [STRATA]     (root)
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
strata=$(realpath "${1:-$src/build/strata}")
C=$src/tests/netns/cluster.sh
export STRATA_NETNS_PREFIX=strata-b$$ STRATA_NETNS_DIR=/tmp/strata-b$$-netns
export OMP_NUM_THREADS=1
work=$(mktemp -d)
trap '"$C" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
cd "$work"
"$strata" pack --tokenizer byte --out code /usr/include/*.h >/dev/null
cat > run.ini <<'EOF2'
[model]
n_layer = 4
n_head = 4
n_embd = 256
block_size = 128
vocab_size = 256
[data]
new = code.h5
seq_len = 128
[train]
steps = 12
global_batch = 6
micro_batch = 2
bucket_mb = 1
[checkpoint]
every = 0
resume = never
[log]
every = 1
EOF2
report() {
  /usr/bin/python3 -c "
import json, statistics
r = [json.loads(l) for l in open('$work/$1.jsonl')][2:]
print('%-28s step %6.1f ms   comm exposed %5.1f ms' % ('$2', statistics.median(x['ms'] for x in r), statistics.median(x['comm_ms'] for x in r)))"
}
"$C" up 3 >/dev/null
"$C" mpirun -np 3 "$strata" train --config "$work/run.ini" --set checkpoint.dir="$work/a" --set log.metrics="$work/hosts.jsonl" >/dev/null 2>&1
report hosts "3 hosts x 1 rank, TCP"
mpirun --allow-run-as-root --oversubscribe --bind-to none -np 3 "$strata" train --config run.ini --set checkpoint.dir=b --set log.metrics=shm.jsonl >/dev/null 2>&1
report shm "1 host x 3 ranks, shm"
mpirun --allow-run-as-root --oversubscribe --bind-to none --mca btl tcp,self -np 3 "$strata" train --config run.ini --set checkpoint.dir=c --set log.metrics=tcp.jsonl >/dev/null 2>&1
report tcp "1 host x 3 ranks, TCP"
