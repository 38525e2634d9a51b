#!/usr/bin/env bash
# Data parallelism on one machine, the small config at the same global batch
# (16 sequences of 256 tokens): strata 2 ranks x 1 thread against strata
# 1 rank x 2 threads and PyTorch DDP (gloo, 2 ranks x 1 thread), in one sitting,
# ROUNDS times interleaved. The 2-rank run goes twice: buckets driven by
# MPI_Test calls between blocks (comm_thread = false) and by a progress thread
# (comm_thread = true).
# Needs a GPT-2-tokenized shard: tests/bench_ddp.sh SHARD.h5 [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
shard=$(realpath "$1")
rounds=${2:-1}
strata=${STRATA:-$PWD/build/strata}
work=$(mktemp -d)
run() { # label np threads [more --set options]
  local label=$1 np=$2 threads=$3
  shift 3
  mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$np" -x OMP_NUM_THREADS="$threads" \
    "$strata" train --config configs/small.ini --set data.new="$shard" \
    --set data.replay_ratio=0 --set data.replay= --set train.steps=8 --set train.warmup=1 \
    --set train.global_batch=16 --set train.micro_batch=8 --set log.every=1 \
    --set checkpoint.dir="$work/$label" --set checkpoint.resume=never \
    --set log.metrics="$work/$label.jsonl" "$@" > "$work/$label.log" 2>&1
  /usr/bin/python3 -c "
import json, statistics
r = [json.loads(l) for l in open('$work/$label.jsonl')][2:]
tps = statistics.median(x['tokens_per_s'] for x in r)
exposed = 100 * statistics.median(x['comm_ms'] / x['ms'] for x in r)
print('%-30s %8.0f tokens/s  comm exposed %5.1f%% of the step  hidden %4.0f%%' % ('$label',
  tps, exposed, 100 * statistics.median(x.get('comm_hidden', 1) for x in r)))
open('$work/results', 'a').write('%s|%s|%.1f|%.2f\\n' % ('$label', '$round', tps, exposed))"
}
# Per-round ratios, then their medians.
summary() {
  /usr/bin/python3 - "$work/results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    label, rnd, tps, exposed = line.rstrip("\n").split("|")
    runs[rnd][label] = (float(tps), float(exposed))
def show(what, a, b):
    r = sorted(x[a][0] / x[b][0] for x in runs.values())
    print(f"{what}: median {statistics.median(r):.2f}x (range {r[0]:.2f}-{r[-1]:.2f})")
for mode in ("thread", "MPI_Test"):
    two = f"strata 2 ranks x 1, {mode}"
    show(f"2x1 ({mode}) / 1x2", two, "strata 1 rank x 2")
    show(f"2x1 ({mode}) / torch DDP", two, "torch")
    e = sorted(x[two][1] for x in runs.values())
    print(f"2x1 ({mode}) exposed communication: median {statistics.median(e):.1f}% (range {e[0]:.1f}-{e[-1]:.1f}%)")
PY
}
for round in $(seq 1 "$rounds"); do
  echo "round $round"
  run "strata 2 ranks x 1, MPI_Test" 2 1 --set train.comm_thread=false
  run "strata 2 ranks x 1, thread" 2 1 --set train.comm_thread=true
  run "strata 1 rank x 2" 1 2
  t=$(/usr/bin/python3 ../shared/bench/torch_gpt2.py --config small --threads 1 --ddp 2 2>&1 | tail -1 |
    tr ' ' '\n' | sed -n 's/^tokens_per_s=//p')
  echo "torch DDP gloo 2x1               $t"
  echo "torch|$round|$t|0" >> "$work/results"
done
summary
rm -rf "$work"
