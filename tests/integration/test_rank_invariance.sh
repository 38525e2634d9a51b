#!/usr/bin/env bash
# Same model whatever the rank count: with the same global batch, 1 rank x 4
# micro-batches, 2 ranks x 2, 3 ranks (1, 1 and 2) and 4 ranks x 1 reach the
# same parameters and Adam moments after 10 steps, ZeRO-1 agrees with
# ZeRO-0, and all of it holds with the TCP transport forced. The issue asks
# for 1e-5 (max-abs-normalised); strata adds gradients along one fixed tree
# (mpi/comm.c), so the runs agree bit for bit, and that is what is checked.
. "$(dirname "$0")/lib.sh"
cmp_ckpt() { "$PYTHON" "$STRATA_SOURCE_DIR/tests/integration/compare_ckpt.py" "$@"; }

"$STRATA" pack --tokenizer byte --out english $(english_files 600000) >/dev/null
"$STRATA" pack --tokenizer byte --out code $(code_files 600000) >/dev/null
cat > run.ini <<'EOF2'
[model]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 32
vocab_size = 256
[data]
new = code.h5
replay = english.h5
replay_ratio = 0.25
seq_len = 32
seed = 7
[train]
steps = 10
global_batch = 4
micro_batch = 4
lr = 3e-3
warmup = 2
grad_clip = 1.0
bucket_mb = 0.01
[checkpoint]
dir = ckpt
resume = never
EOF2
apply_family run.ini

# The gradient buckets are driven by a progress thread (the default) or by
# MPI_Test calls from backward (comm_thread = false): same sums either way.
run() { # name np micro zero [mpirun args]; progress=test picks MPI_Test
  local name=$1 np=$2 micro=$3 zero=$4
  shift 4
  "${MPIRUN[@]}" -np "$np" "$@" "$STRATA" train --config run.ini --set checkpoint.dir="$name" \
    --set train.micro_batch="$micro" --set train.zero="$zero" \
    --set train.comm_thread="$([ "${progress:-thread}" = test ] && echo false || echo true)" > "$name.log" 2>&1 ||
    fail "$name: exit $?: $(tail -5 "$name.log")"
}

run w1 1 1 0
run w2 2 1 0
run w4 4 1 0
run w3 3 1 0
run w1m2 1 2 0
run w2m2 2 2 1
run w2z 2 1 1
run w4z 4 1 1
run w2tcp 2 1 0 --mca btl tcp,self
run w4ztcp 4 1 1 --mca btl tcp,self
progress=test run w4poll 4 1 0
progress=test run w2zpoll 2 1 1
for other in w2 w3 w4 w2z w4z w2tcp w4ztcp w4poll w2zpoll; do
  echo -n "$other vs w1: "
  cmp_ckpt "$other/ckpt-10.h5" w1/ckpt-10.h5 --bitwise || fail "$other differs from the 1-rank run"
done
echo -n "w4z vs w4: "
cmp_ckpt w4z/ckpt-10.h5 w4/ckpt-10.h5 --bitwise || fail "ZeRO-1 differs from ZeRO-0 on 4 ranks"
# Micro-batches of 2 sequences: 1 rank x 2 of them against 2 ranks x 1 (ZeRO-1).
echo -n "w2m2 vs w1m2: "
cmp_ckpt w2m2/ckpt-10.h5 w1m2/ckpt-10.h5 --bitwise || fail "micro-batches of 2 differ across ranks"
# Against micro-batches of 1 the leaves differ (one sgemm sums two sequences):
# equal only to fp32 rounding, which Adam amplifies where a gradient is ~0.
echo -n "w1m2 vs w1: "
if [ "${PRECISION:-fp32}" = bf16 ]; then
  # bf16's noise on a zero gradient (the key bias) is far above Adam's eps:
  # the weights are no measure there, the last step's loss is (within 1 %).
  l1=$(sed -n 's/^step 10\/10 | loss \([0-9.]*\).*/\1/p' w1.log)
  l2=$(sed -n 's/^step 10\/10 | loss \([0-9.]*\).*/\1/p' w1m2.log)
  awk -v a="$l1" -v b="$l2" 'BEGIN { d = (a - b) / a; print "loss", a, "vs", b; exit !(a > 0 && d * d < 1e-4) }' ||
    fail "micro-batch size changed the bf16 loss"
else
  cmp_ckpt w1m2/ckpt-10.h5 w1/ckpt-10.h5 --tol 1e-3 --model-only || fail "micro-batch size changed the model"
fi
