#!/usr/bin/env bash
# Elastic resume: a run checkpointed on 2 ranks and resumed on 1 and on 4
# ranks ends as the uninterrupted run does. The issue asks for 1e-5; with
# the fixed gradient-sum order (one micro-batch per slot) it is bitwise.
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
[train]
steps = 20
global_batch = 4
micro_batch = 1
lr = 3e-3
warmup = 2
[checkpoint]
every = 10
keep = 0
resume = auto
EOF2
apply_family run.ini
"${MPIRUN[@]}" -np 2 "$STRATA" train --config run.ini --set checkpoint.dir=ref > ref.log 2>&1 || fail "reference: $(tail -3 ref.log)"
for np in 1 4; do
  for zero in 0 1; do
    dir=w${np}z$zero
    mkdir -p "$dir"
    cp ref/ckpt-10.h5 "$dir/"
    echo ckpt-10.h5 > "$dir/latest"
    "${MPIRUN[@]}" -np $np "$STRATA" train --config run.ini --set checkpoint.dir="$dir" \
      --set train.zero=$zero > "$dir.log" 2>&1 || fail "$dir: $(tail -3 "$dir.log")"
    grep -q "resumed from .*ckpt-10.h5 at step 10 .*saved on 2 ranks" "$dir.log" || fail "$dir did not resume from step 10"
    echo -n "saved on 2 ranks, resumed on $np (zero=$zero): "
    cmp_ckpt "$dir/ckpt-20.h5" ref/ckpt-20.h5 --bitwise || fail "$dir differs"
  done
done
