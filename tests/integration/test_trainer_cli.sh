#!/usr/bin/env bash
# The trainer's errors and defaults as the CLI shows them: out-of-memory is
# exit 3 with one line saying so; two runs started side by side from one
# directory keep their checkpoints beside their configs and do not find
# each other's; `strata eval` appends its records to the metrics file.
. "$(dirname "$0")/lib.sh"

"$PYTHON" - <<'PY'
import h5py, numpy as np
rng = np.random.default_rng(0)
for name, n in (("train.h5", 20000), ("val.h5", 2000)):
    with h5py.File(name, "w") as f:
        d = f.create_dataset("tokens", data=rng.integers(1, 256, n).astype("uint16"), chunks=True)
        d.attrs["vocab_size"] = 256
        d.attrs["eot_token"] = 0
        d.attrs["tokenizer"] = "byte"
        d.attrs["format"] = "strata-tokens-1"
PY

write_config() { # FILE DATA_DIR STEPS
  cat > "$1" <<EOF2
[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 32
vocab_size = 256
[data]
new = $2/train.h5
seq_len = 32
[train]
steps = $3
global_batch = 4
micro_batch = 2
warmup = 1
[checkpoint]
every = 5
[log]
every = 5
metrics = metrics.jsonl
[eval.english]
path = $2/val.h5
role = old
EOF2
}

# Out of memory: activations for a micro-batch of a million sequences.
write_config oom.ini . 2
expect_exit 3 "^strata train: out of memory for activations \([0-9.]+ GiB for B=1000000 T=32\)$" \
  "$STRATA" train --config oom.ini --set train.micro_batch=1000000 --set train.global_batch=1000000

# Two runs from one directory, each config in its own directory, no
# [checkpoint] dir: each keeps its checkpoints in its config's directory.
mkdir -p a b
write_config a/run.ini .. 10
write_config b/run.ini .. 20
"$STRATA" train --config a/run.ini > a.log 2>&1 &
pid_a=$!
"$STRATA" train --config b/run.ini > b.log 2>&1 || fail "run b failed: $(tail -3 b.log)"
wait "$pid_a" || fail "run a failed: $(tail -3 a.log)"
[ "$(cat a/ckpt/DONE)" = "10 10" ] || fail "a/ckpt/DONE: $(cat a/ckpt/DONE 2>&1)"
[ "$(cat b/ckpt/DONE)" = "20 20" ] || fail "b/ckpt/DONE: $(cat b/ckpt/DONE 2>&1)"
[ ! -e ckpt ] || fail "a run wrote checkpoints into the current directory"
! grep -q "resumed from" a.log b.log || fail "a run found the other's checkpoints"
grep -q "eval english  step 20 " b.log || fail "b did not evaluate: $(tail -3 b.log)"
# Run again: each resumes its own, finds nothing left to do.
"$STRATA" train --config a/run.ini > a2.log 2>&1 || fail "a again: $(tail -3 a2.log)"
grep -q "resumed from a/ckpt/ckpt-10.h5 at step 10" a2.log || fail "a did not resume its own: $(head -3 a2.log)"

# strata eval writes its records to the metrics file (a/metrics.jsonl),
# forgetting included for role = old, after the training records.
before=$(wc -l < a/metrics.jsonl)
"$STRATA" eval --config a/run.ini --checkpoint a/ckpt/ckpt-10.h5 > eval.log 2>&1 || fail "eval: $(cat eval.log)"
[ "$(wc -l < a/metrics.jsonl)" -eq $((before + 1)) ] || fail "strata eval did not append one record"
"$PYTHON" - <<'PY' || fail "the eval record"
import json
rows = [json.loads(l) for l in open("a/metrics.jsonl")]
last, train_eval = rows[-1], [r for r in rows if r.get("eval") == "english"][-2]
assert last["eval"] == "english" and last["step"] == 10, last
assert abs(last["loss"] - train_eval["loss"]) < 1e-5, (last, train_eval)
assert abs(last["forgetting"] - train_eval["forgetting"]) < 1e-5, (last, train_eval)
assert last["baseline"] == train_eval["baseline"], (last, train_eval)
PY
echo "ok: out-of-memory exit 3, side-by-side runs apart, strata eval appends to the metrics"
