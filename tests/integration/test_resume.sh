#!/usr/bin/env bash
# Bit-identical resume: a 2-rank run stopped by SIGTERM at an arbitrary step
# (exit 75, after a checkpoint) and resumed, or stopped twice, ends with the
# same model and optimizer tensors, byte for byte, as an uninterrupted run.
# The signal reaches one rank only: the ranks must agree to stop.
. "$(dirname "$0")/lib.sh"
cmp_ckpt() { "$PYTHON" "$STRATA_SOURCE_DIR/tests/integration/compare_ckpt.py" "$@"; }

"$STRATA" pack --tokenizer byte --out english $(english_files 800000) >/dev/null
"$STRATA" pack --tokenizer byte --out code $(code_files 800000) >/dev/null
cat > run.ini <<'EOF2'
[model]
n_layer = 2
n_head = 4
n_embd = 128
block_size = 64
vocab_size = 256
[data]
new = code.h5
replay = english.h5
replay_ratio = 0.25
seq_len = 64
seed = 11
[train]
steps = 60
global_batch = 8
micro_batch = 2
lr = 2e-3
warmup = 5
[checkpoint]
every = 10
keep = 0
resume = auto
[log]
every = 1
EOF2
apply_family run.ini

train() { # dir [more args]
  local dir=$1
  shift
  "${MPIRUN[@]}" -np 2 "$STRATA" train --config run.ini --set checkpoint.dir="$dir/ckpt" \
    --set log.metrics="$dir/metrics.jsonl" "$@"
}

# Waits until the run in $1 logged step >= $2, then signals one of its ranks.
# The ranks are frozen (SIGSTOP) around the signal: a step takes milliseconds
# on a fast machine, and the run must not finish between seeing the step and
# delivering SIGTERM.
stop_at() {
  local dir=$1 step=$2 pids
  for _ in $(seq 1 3000); do
    if [ -f "$dir/metrics.jsonl" ] && [ "$(tail -n1 "$dir/metrics.jsonl" | sed -n 's/.*"step":\([0-9]*\).*/\1/p')" -ge "$step" ] 2>/dev/null; then
      pids=$(pgrep -f "^$STRATA train .*checkpoint.dir=$dir/ckpt") || fail "no rank of $dir to signal"
      kill -STOP $pids
      kill -TERM "$(shuf -n1 <<<"$pids")"
      kill -CONT $pids
      return 0
    fi
    sleep 0.01
  done
  fail "run $dir never reached step $step"
}

# The reference: one piece.
train ref > ref.log 2>&1 || fail "uninterrupted run failed: $(tail -3 ref.log)"

interrupted_run() { # dir, then the steps to stop at
  local dir=$1 rc
  shift
  for at in "$@"; do
    train "$dir" > "$dir-$at.log" 2>&1 &
    local job=$!
    stop_at "$dir" "$at"
    rc=0
    wait "$job" || rc=$?
    [ "$rc" -eq 75 ] || fail "$dir: stop at step $at exited $rc, expected 75: $(tail -5 "$dir-$at.log")"
    grep -q "stopped at step" "$dir-$at.log" || fail "$dir: no stop message"
  done
  train "$dir" > "$dir-final.log" 2>&1 || fail "$dir: resumed run failed: $(tail -3 "$dir-final.log")"
  grep -q "resumed from" "$dir-final.log" || fail "$dir: did not resume"
  echo -n "$dir: "
  cmp_ckpt "$dir/ckpt/ckpt-60.h5" ref/ckpt/ckpt-60.h5 --bitwise || fail "$dir differs from the uninterrupted run"
}

mkdir -p once twice
interrupted_run once $((RANDOM % 40 + 3))
interrupted_run twice $((RANDOM % 15 + 3)) $((RANDOM % 15 + 25))
