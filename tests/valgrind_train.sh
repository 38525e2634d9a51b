#!/usr/bin/env bash
# valgrind on a 3-step training run of the tiny config (issue 2): no invalid
# access, no leak of strata's own (Open MPI's allocations at MPI_Init are
# suppressed: tests/valgrind.supp). About 25 min: valgrind runs ~100x slower.
#   tests/valgrind_train.sh [BUILD_DIR]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
strata=$(realpath "${1:-$src/build}")/strata
work=$(mktemp -d)
cd "$work"
"$strata" pack --tokenizer byte --val-fraction 0.1 --out english /usr/share/common-licenses/* >/dev/null
OMP_NUM_THREADS=1 valgrind --error-exitcode=9 \
  --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
  --suppressions="$src/tests/valgrind.supp" "$strata" train --config "$src/configs/tiny.ini" \
  --set data.new="$work/english.h5" --set eval.val.path="$work/english.val.h5" \
  --set eval.val.max_samples=8 --set train.step_timeout=0 --set train.steps=3 \
  --set checkpoint.dir="$work/ckpt" --set log.metrics="$work/m.jsonl" --set checkpoint.resume=never
echo "valgrind: clean (exit 0)"
