#!/usr/bin/env bash
# Step time of the small config with the lower half of the blocks frozen
# (backprop stops at the lowest trainable block) against all blocks trained,
# same sitting, 1 thread. Needs a GPT-2-tokenized shard: tests/bench_freeze.sh SHARD.h5
set -euo pipefail
cd "$(dirname "$0")/.."
shard=$(realpath "$1")
strata=${STRATA:-$PWD/build/strata}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
work=$(mktemp -d)
for freeze in none blocks:3 all_blocks none blocks:3 all_blocks; do
  "$strata" train --config configs/small.ini --set data.new="$shard" --set data.replay= \
    --set data.replay_ratio=0 --set train.steps=5 --set log.every=1 --set train.freeze=$freeze \
    --set checkpoint.dir="$work/c" --set checkpoint.resume=never --set log.metrics="$work/m.jsonl" \
    > "$work/log" 2>&1
  /usr/bin/python3 -c "
import json, statistics
ms = [json.loads(l)['ms'] for l in open('$work/m.jsonl')][1:]
print('freeze = %-10s median step %7.0f ms' % ('$freeze', statistics.median(ms)))"
done
rm -rf "$work"
