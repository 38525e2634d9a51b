#!/usr/bin/env bash
# The demo campaign, end to end on one machine:
#   1. pack an "old" English corpus and a "new" C-code corpus found on every
#      Debian machine (license/copyright texts, /usr/include headers);
#   2. pretrain the tiny GPT-2 on English;
#   3. continue it on code with 0 %, 5 % and 25 % replay of English, on 2 MPI ranks;
#   4. print the forgetting/learning table and where the plots are.
# About 4 minutes on 2 quiet cores. Outputs go to data/ and runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
strata=$root/build/strata

# Corpora: sorted file lists, so the same machine packs the same bytes.
pick() { # limit files...
  local limit=$1 total=0 f
  shift
  for f in "$@"; do
    [ -f "$f" ] || continue
    total=$((total + $(stat -c %s "$f")))
    echo "$f"
    [ "$total" -lt "$limit" ] || break
  done
}
mkdir -p data/english data/code
echo "== packing the corpora"
"$strata" pack --tokenizer byte --val-fraction 0.05 --out data/english/train \
  $(pick 6000000 /usr/share/common-licenses/* $(ls /usr/share/doc/*/copyright | sort))
"$strata" pack --tokenizer byte --val-fraction 0.05 --out data/code/train \
  $(pick 6000000 $(ls /usr/include/*.h /usr/include/*/*.h | sort))

rm -rf runs/demo
echo "== pretraining on English (tiny GPT-2, $(nproc) threads)"
"$strata" train --config configs/demo/pretrain.ini
init=$root/runs/demo/pretrain/ckpt/ckpt-800.h5

ranks=2
threads=$(( $(nproc) / ranks ))
[ "$threads" -ge 1 ] || threads=1
for replay in 0 5 25; do
  echo "== continuing on code with ${replay}% replay ($ranks MPI ranks)"
  ratio=$(printf '0.%02d' "$replay")
  mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$ranks" -x OMP_NUM_THREADS="$threads" \
    "$strata" train --config configs/demo/continue.ini \
    --set model.init="$init" --set data.replay_ratio="$ratio" \
    --set checkpoint.dir="$root/runs/demo/replay-$replay/ckpt" \
    --set log.metrics="$root/runs/demo/replay-$replay/metrics.jsonl"
done

echo "== forgetting and learning (eval loss in nats per byte; old = English, new = code)"
"$strata" report runs/demo/replay-0/metrics.jsonl runs/demo/replay-5/metrics.jsonl \
  runs/demo/replay-25/metrics.jsonl --out runs/demo/report
echo "plots and the table: $root/runs/demo/report/ (summary.md, *.svg, *.png)"
