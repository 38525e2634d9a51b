#!/usr/bin/env bash
# follow: a run that has used up its new-data manifest waits (and says so),
# picks up a shard appended to the manifest, and ends as a run that had all
# the shards from the start does, bit for bit; a SIGTERM while it waits
# stops it with a checkpoint (exit 75).
. "$(dirname "$0")/lib.sh"
cmp_ckpt() { "$PYTHON" "$STRATA_SOURCE_DIR/tests/integration/compare_ckpt.py" "$@"; }
mapfile -t files < <(code_files 400000)
half=$(( ${#files[@]} / 2 ))
"$STRATA" pack --tokenizer byte --out a "${files[@]:0:$half}" >/dev/null
"$STRATA" pack --tokenizer byte --out b "${files[@]:$half}" >/dev/null
printf 'a.h5\nb.h5\n' > all.manifest
printf 'a.h5\n' > growing.manifest
cat > run.ini <<'EOF2'
[model]
n_layer = 1
n_head = 2
n_embd = 32
block_size = 32
vocab_size = 256
[data]
seq_len = 32
shuffle_window = 64
follow = true
follow_timeout = 120
[train]
global_batch = 4
micro_batch = 2
schedule = constant
warmup = 2
[checkpoint]
keep = 0
resume = auto
EOF2
# Steps that need both shards: a alone feeds about half of them.
steps=$("$PYTHON" -c "
import h5py
n = sum((h5py.File(f)['tokens'].shape[0] - 1) // 32 for f in ('a.h5', 'b.h5'))
print(n // 4 - 16)")
"$STRATA" train --config run.ini --set data.new=all.manifest --set data.follow=false \
  --set train.steps="$steps" --set checkpoint.dir=ref > ref.log 2>&1 || fail "reference: $(tail -3 ref.log)"
"$STRATA" train --config run.ini --set data.new=growing.manifest --set train.steps="$steps" \
  --set checkpoint.dir=grown > grown.log 2>&1 &
job=$!
for _ in $(seq 1 600); do grep -q "waiting for new shards" grown.log && break; sleep 0.1; done
grep -q "waiting for new shards" grown.log || fail "the run did not wait: $(tail -3 grown.log)"
echo "waiting: $(grep -m1 'waiting for new shards' grown.log)"
echo b.h5 >> growing.manifest
rc=0
wait "$job" || rc=$?
[ "$rc" -eq 0 ] || fail "the following run exited $rc: $(tail -3 grown.log)"
echo -n "follow with a shard appended vs all shards from the start: "
cmp_ckpt "grown/ckpt-$steps.h5" "ref/ckpt-$steps.h5" --bitwise || fail "the following run differs"

# SIGTERM while waiting.
printf 'a.h5\n' > waiting.manifest
"$STRATA" train --config run.ini --set data.new=waiting.manifest --set train.steps="$steps" \
  --set checkpoint.dir=waiting > waiting.log 2>&1 &
job=$!
for _ in $(seq 1 600); do grep -q "waiting for new shards" waiting.log && break; sleep 0.1; done
kill -TERM "$job"
rc=0
wait "$job" || rc=$?
[ "$rc" -eq 75 ] || fail "SIGTERM while waiting gave exit $rc: $(tail -3 waiting.log)"
[ -f waiting/latest ] || fail "no checkpoint after SIGTERM while waiting"
echo "SIGTERM while waiting for shards: exit 75 after saving $(cat waiting/latest)"
