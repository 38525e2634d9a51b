#!/usr/bin/env bash
# precision = bf16 (issue 13), end to end, on whatever machine runs it:
# - the start-up line names the bf16 backend; a bf16 run differs from the
#   fp32 one (bf16 really ran) yet stays close to it;
# - a bf16 run resumed from its own step-5 checkpoint ends bitwise equal
#   (model and Adam state) to the uninterrupted one;
# - a run switches precision at a resume: an fp32 checkpoint continues in
#   bf16 (checkpoints hold fp32 master weights either way), reproducibly;
# - all of the above for GPT-2 and for the llama family (lib.sh's FAMILY);
# - a build without oneDNN refuses bf16 with one line naming libdnnl;
# - the bitwise rank-invariance test (GPT-2: W = 1..4, ZeRO-1, micro-batches
#   of 1 and 2) runs again in bf16 (lib.sh's apply_family, PRECISION=bf16).
# (test_resume.sh's SIGTERM path is precision-blind; the resume here is.)
. "$(dirname "$0")/lib.sh"
here="$STRATA_SOURCE_DIR/tests/integration"
cmp_ckpt() { "$PYTHON" "$here/compare_ckpt.py" "$@"; }

"$STRATA" pack --tokenizer byte --out english $(english_files 300000) >/dev/null
cat > run.ini <<'EOF2'
[model]
n_layer = 2
n_head = 4
n_embd = 64
block_size = 32
vocab_size = 256
[data]
new = english.h5
seq_len = 32
seed = 3
[train]
steps = 10
global_batch = 4
micro_batch = 2
lr = 2e-3
warmup = 2
[checkpoint]
every = 5
keep = 0
resume = auto
[log]
every = 1
EOF2
cp run.ini base.ini

train() { # dir [more args]
  local dir=$1
  shift
  "$STRATA" train --config run.ini --set checkpoint.dir="$dir" --set log.metrics="$dir.jsonl" "$@"
}

if ! "$STRATA" bench --config run.ini --set train.precision=bf16 --steps 1 --warmup 0 >bench.log 2>bench.err; then
  # Only a build without oneDNN may refuse, and then in one line naming it.
  grep -q 'libdnnl' bench.err || fail "bench in bf16 failed: $(cat bench.err)"
  expect_exit 2 'precision.*libdnnl' train fp32 --set train.precision=bf16
  echo "built without oneDNN: bf16 refused as it should be"
  exit 0
fi
grep -q '^precision  bf16' bench.log || fail "bench did not say it ran bf16: $(cat bench.log)"

cat >close_losses.py <<'EOF3'
import json, sys
a, b = ([json.loads(l) for l in open(f) if '"loss"' in l and '"eval"' not in l] for f in sys.argv[1:])
assert len(a) == len(b) == 10, (len(a), len(b))
worst = max(abs(x["loss"] - y["loss"]) / x["loss"] for x, y in zip(a, b))
print(f"bf16 vs fp32: worst relative loss difference over 10 steps {worst:.2e}")
sys.exit(0 if 0 < worst < 1e-2 else 1)
EOF3

for FAMILY in gpt2 llama; do
  echo "== $FAMILY"
  mkdir -p "$FAMILY"
  cd "$FAMILY"
  cp ../base.ini run.ini
  ln -sf ../english.h5 english.h5
  apply_family run.ini
  train fp32 >fp32.log
  train bf16 --set train.precision=bf16 >bf16.log
  mkdir -p resumed
  cp bf16/ckpt-5.h5 resumed/
  echo ckpt-5.h5 >resumed/latest
  train resumed --set train.precision=bf16 >resumed.log
  cmp_ckpt resumed/ckpt-10.h5 bf16/ckpt-10.h5 --bitwise || fail "$FAMILY: bf16 resume is not bitwise"
  grep -q 'bf16 matmul' bf16.log || fail "$FAMILY: the start-up line does not name the bf16 backend"
  cmp_ckpt bf16/ckpt-10.h5 fp32/ckpt-10.h5 --bitwise --model-only &&
    fail "$FAMILY: bf16 and fp32 runs are bitwise equal: bf16 did not run"
  # Close: the losses of every step within 1 % (the weights are no measure:
  # Adam turns the noise of a zero gradient, such as the key bias's, into
  # full-size steps either way).
  "$PYTHON" ../close_losses.py fp32.jsonl bf16.jsonl || fail "$FAMILY: bf16 losses are far from the fp32 ones"

  # Switch at a resume: the fp32 run's step-5 checkpoint continued in bf16 to
  # step 10, twice: bitwise the same, and neither the fp32 nor the bf16 run.
  for d in switch switch2; do
    mkdir -p $d
    cp fp32/ckpt-5.h5 $d/
    echo ckpt-5.h5 >$d/latest
    train $d --set train.precision=bf16 >$d.log
  done
  grep -qi 'resum' switch.log || fail "$FAMILY: the switched run did not resume: $(head -3 switch.log)"
  cmp_ckpt switch/ckpt-10.h5 switch2/ckpt-10.h5 --bitwise || fail "$FAMILY: switching at a resume is not reproducible"
  cmp_ckpt switch/ckpt-10.h5 bf16/ckpt-10.h5 --bitwise --model-only &&
    fail "$FAMILY: switched run equals the all-bf16 one: the first 5 steps were not fp32"
  cmp_ckpt switch/ckpt-10.h5 fp32/ckpt-10.h5 --bitwise --model-only &&
    fail "$FAMILY: switched run equals the fp32 one: the last 5 steps were not bf16"

  cd ..
done
export FAMILY=gpt2

echo "== test_rank_invariance, gpt2, bf16"
STRATA_WORK="$STRATA_WORK/rank" PRECISION=bf16 bash "$here/test_rank_invariance.sh"
echo "PASS"
