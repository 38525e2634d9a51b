#!/usr/bin/env bash
# It learns: configs/tiny.ini on English text packed from this machine takes
# the held-out loss from ~ln(256) = 5.55 to below 2.0 nats per byte.
. "$(dirname "$0")/lib.sh"

"$STRATA" pack --tokenizer byte --val-fraction 0.05 --out english $(english_files 4000000) > pack.log
OMP_NUM_THREADS=$(nproc) "$STRATA" train --config "$STRATA_SOURCE_DIR/configs/tiny.ini" \
  --set data.new="$PWD/english.h5" --set eval.val.path="$PWD/english.val.h5" \
  --set checkpoint.dir="$PWD/ckpt" --set log.metrics="$PWD/metrics.jsonl" \
  --set checkpoint.resume=never > train.log 2>&1 || fail "training failed: $(tail -5 train.log)"
first=$("$PYTHON" -c "
import json
print([r for r in map(json.loads, open('metrics.jsonl')) if r.get('eval') == 'val'][0]['loss'])")
last=$(last_eval_loss metrics.jsonl val)
echo "held-out loss: $first at step 0 -> $last at the end (nats per byte)"
"$PYTHON" -c "import sys; sys.exit(not (5.0 < $first < 6.0))" || fail "initial loss $first is not ~ln(256)"
"$PYTHON" -c "import sys; sys.exit(not ($last < 2.0))" || fail "held-out loss $last is not below 2.0"
