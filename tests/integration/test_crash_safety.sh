#!/usr/bin/env bash
# Nothing lost: kill -9 at random moments (checkpoints being written every
# step) always leaves a `latest` that loads; a truncated or corrupted newest
# checkpoint is reported and skipped for the previous one; a full disk during
# a save ends the run with a clear error and leaves the previous checkpoint.
. "$(dirname "$0")/lib.sh"

"$STRATA" pack --tokenizer byte --out code $(code_files 1000000) >/dev/null
cat > run.ini <<'EOF2'
[model]
n_layer = 4
n_head = 4
n_embd = 192
block_size = 64
vocab_size = 256
[data]
new = code.h5
seq_len = 64
[train]
steps = 100000
global_batch = 4
micro_batch = 2
[checkpoint]
dir = ckpt
every = 1
keep = 2
resume = auto
EOF2

# 1. kill -9 of a rank at random moments, 20 times; every restart resumes.
kills=0 resumed=0 job=
trap '[ -n "$job" ] && kill -9 $job 2>/dev/null; pkill -9 -f "^$STRATA train --config run.ini" || true' EXIT
for i in $(seq 1 20); do
  "${MPIRUN[@]}" -np 2 "$STRATA" train --config run.ini > "run-$i.log" 2>&1 &
  job=$!
  # Each run first loads latest (the first one first writes one), then is
  # killed anywhere in the next 1.5 s: in a step or in a checkpoint write.
  for _ in $(seq 1 900); do
    if [ "$i" -eq 1 ]; then [ -f ckpt/latest ] && break; else grep -q "resumed from" "run-$i.log" && break; fi
    kill -0 "$job" 2>/dev/null || fail "run $i ended early: $(tail -3 "run-$i.log")"
    sleep 0.1
  done
  sleep "$((RANDOM % 2)).$((RANDOM % 10))$((RANDOM % 10))"
  pid=$(pgrep -f "^$STRATA train --config run.ini" | shuf -n1 || true)
  if [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; then kills=$((kills + 1)); fi
  for _ in $(seq 1 300); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$job" 2>/dev/null && fail "run $i still alive 30 s after a rank was killed"
  wait "$job" || true
  grep -q "checkpoint.*: \(cannot\|not\|bad\|fail\)" "run-$i.log" && fail "run $i could not load: $(grep ckpt "run-$i.log")"
  grep -q "resumed from" "run-$i.log" && resumed=$((resumed + 1))
  [ -f ckpt/latest ] || fail "no latest after run $i"
done
ls ckpt
echo "killed a rank $kills times; $resumed restarts resumed from latest"
[ "$kills" -ge 20 ] || fail "only $kills kills landed"
[ "$resumed" -ge 19 ] || fail "only $resumed of 19 restarts resumed"
# The last latest must load and train on.
last=$(ls ckpt/ckpt-*.h5 | sed 's/.*ckpt-\([0-9]*\).h5/\1/' | sort -n | tail -1)
"$STRATA" train --config run.ini --set train.steps=$((last + 1)) > final.log 2>&1 ||
  fail "the last checkpoint does not resume: $(tail -3 final.log)"

# 2. A corrupted newest checkpoint is skipped, with a warning naming it.
"$STRATA" train --config run.ini --set train.steps=$((last + 3)) --set checkpoint.keep=0 > more.log 2>&1 || fail "more.log"
newest=ckpt/ckpt-$((last + 3)).h5
previous=ckpt/ckpt-$((last + 2)).h5
cp "$newest" newest.bak
size=$(stat -c %s "$newest")
# flip bytes in the middle of the payload
"$PYTHON" -c "
import sys
p='$newest'; b=bytearray(open(p,'rb').read())
for off in range(len(b)//2, len(b)//2 + 64): b[off] ^= 0x5a
open(p,'wb').write(b)"
"$STRATA" train --config run.ini --set train.steps=$((last + 4)) --set checkpoint.keep=0 > flipped.log 2>&1 || fail "flipped: $(tail -3 flipped.log)"
grep -q "warning:.*ckpt-$((last + 3)).h5" flipped.log || fail "no warning naming the corrupted checkpoint: $(head -3 flipped.log)"
grep -q "resumed from .*ckpt-$((last + 2)).h5" flipped.log || fail "did not fall back to the previous checkpoint"
# truncated
cp newest.bak "$newest"
rm -f ckpt/ckpt-$((last + 4)).h5
echo "ckpt-$((last + 3)).h5" > ckpt/latest
truncate -s $((size / 2)) "$newest"
"$STRATA" train --config run.ini --set train.steps=$((last + 4)) --set checkpoint.keep=0 > truncated.log 2>&1 || fail "truncated: $(tail -3 truncated.log)"
grep -q "warning:.*ckpt-$((last + 3)).h5" truncated.log || fail "no warning naming the truncated checkpoint"
grep -q "resumed from .*ckpt-$((last + 2)).h5" truncated.log || fail "did not fall back after truncation"
echo "corrupted and truncated newest checkpoints were reported and skipped"

# 3. A full disk during a save: a 2 MiB tmpfs holds one checkpoint (1.5 MB), not two.
mkdir -p small
mount -t tmpfs -o size=2m strata-test-tmpfs small || fail "cannot mount a tmpfs (needs root)"
trap 'umount small 2>/dev/null || true' EXIT  # the runs above are over
cat > full.ini <<'EOF2'
[model]
n_layer = 2
n_head = 4
n_embd = 64
block_size = 64
vocab_size = 256
[data]
new = code.h5
seq_len = 64
[train]
steps = 10
global_batch = 4
micro_batch = 4
[checkpoint]
dir = small/ckpt
every = 5
keep = 0
resume = never
EOF2
rc=0
"$STRATA" train --config full.ini > full.log 2>&1 || rc=$?
[ "$rc" -eq 1 ] || fail "a full disk gave exit $rc, expected 1: $(tail -3 full.log)"
grep -q "No space left\|no space\|ENOSPC\|disk full" full.log || fail "no clear disk-full message: $(tail -3 full.log)"
ls -la small/ckpt
"$PYTHON" -c "
import h5py; f = h5py.File('small/ckpt/ckpt-5.h5', 'r')
assert int(f.attrs['step']) == 5
for k in f['model']: f['model'][k][()]
" || fail "the previous checkpoint is not intact"
[ "$(cat small/ckpt/latest)" = "ckpt-5.h5" ] || grep -q "ckpt-5.h5" small/ckpt/latest || fail "latest does not name ckpt-5.h5"
ls small/ckpt | grep -q tmp && fail "a temporary file was left behind"
echo "full disk: exit 1 with '$(grep -i space full.log | head -1)'; ckpt-5.h5 intact"
