#!/usr/bin/env bash
# No hangs: a rank killed with SIGKILL, or one rank meeting bad data, ends
# the whole job with a non-zero status and a message within 30 s.
. "$(dirname "$0")/lib.sh"

"$STRATA" pack --tokenizer byte --out code $(code_files 1000000) >/dev/null
# A shard whose second half holds out-of-range ids: the ranks that draw a
# sample there fail, the others are in a collective by then.
"$PYTHON" - <<'PY'
import h5py, numpy as np
rng = np.random.default_rng(1)
t = rng.integers(1, 256, 200000).astype(np.uint32)
t[100000::997] = 1000
with h5py.File("bad.h5", "w") as f:
    d = f.create_dataset("tokens", data=t, chunks=(65536,))
    d.attrs["vocab_size"] = 256; d.attrs["eot_token"] = 0
    d.attrs["tokenizer"] = "byte"; d.attrs["format"] = "strata-tokens-1"
PY
cat > run.ini <<'EOF2'
[model]
n_layer = 2
n_head = 4
n_embd = 128
block_size = 64
vocab_size = 256
[data]
new = code.h5
seq_len = 64
[train]
steps = 100000
global_batch = 6
micro_batch = 2
[checkpoint]
dir = ckpt
resume = never
[log]
every = 1
metrics = metrics.jsonl
EOF2
trap 'pkill -9 -f "^$STRATA train --config run.ini" || true' EXIT

# 1. SIGKILL one of 3 ranks mid-run.
"${MPIRUN[@]}" -np 3 "$STRATA" train --config run.ini > kill.log 2>&1 &
job=$!
for _ in $(seq 1 600); do [ -s metrics.jsonl ] && break; sleep 0.1; done
[ -s metrics.jsonl ] || fail "the run never started: $(tail -3 kill.log)"
victim=$(pgrep -f "^$STRATA train --config run.ini" | sed -n 2p)
start=$(date +%s.%N)
kill -9 "$victim"
rc=0
timeout 60 tail --pid="$job" -f /dev/null || fail "job still running 60 s after SIGKILL"
wait "$job" || rc=$?
took=$(echo "$(date +%s.%N) - $start" | bc)
echo "SIGKILL of one of 3 ranks: job ended with status $rc after $took s"
[ "$rc" -ne 0 ] || fail "job ended with status 0"
echo "$took < 30" | bc | grep -q 1 || fail "took $took s"
grep -q "signal 9\|killed\|Killed" kill.log || fail "no message: $(tail -3 kill.log)"

# 2. Bad data met by some ranks only.
start=$(date +%s.%N)
rc=0
timeout 60 "${MPIRUN[@]}" -np 3 "$STRATA" train --config run.ini --set data.new=bad.h5 > bad.log 2>&1 || rc=$?
took=$(echo "$(date +%s.%N) - $start" | bc)
echo "bad token on some ranks: job ended with status $rc after $took s: $(grep 'bad.h5' bad.log | head -1)"
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "status $rc"
echo "$took < 30" | bc | grep -q 1 || fail "took $took s"
grep -q "rank [0-9] (.*): .*bad.h5.*1000" bad.log || fail "no message naming the rank, the file and the token: $(tail -5 bad.log)"

# 3. A rank that stops responding (SIGSTOP: no crash, no message): the
#    others' watchdogs end the job after [train] step_timeout.
"${MPIRUN[@]}" -np 3 "$STRATA" train --config run.ini --set train.step_timeout=5 \
  --set log.metrics=stopped.jsonl > stopped.log 2>&1 &
job=$!
for _ in $(seq 1 600); do [ -s stopped.jsonl ] && break; sleep 0.1; done
[ -s stopped.jsonl ] || fail "the run never started: $(tail -3 stopped.log)"
victim=$(pgrep -f "^$STRATA train --config run.ini --set train.step_timeout=5" | sed -n 2p)
start=$(date +%s.%N)
kill -STOP "$victim"
rc=0
timeout 60 tail --pid="$job" -f /dev/null || fail "job still running 60 s after a rank stopped"
wait "$job" || rc=$?
took=$(echo "$(date +%s.%N) - $start" | bc)
kill -9 "$victim" 2>/dev/null || true
echo "a stopped rank: job ended with status $rc after $took s: $(grep -m1 watchdog stopped.log)"
[ "$rc" -ne 0 ] || fail "job ended with status 0"
echo "$took < 35" | bc | grep -q 1 || fail "took $took s (step_timeout 5 + 30)"
grep -q "watchdog: rank [0-9] (.*) step [0-9]* phase '.*' waited [0-9]* s > step_timeout 5 s" stopped.log ||
  fail "no watchdog line: $(tail -5 stopped.log)"
