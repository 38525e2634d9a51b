#!/usr/bin/env bash
# The continued-pretraining regularisers through the real binary, on real
# English text:
#  (a) L1 as a proximal step lands a measured fraction of the 2-D weights
#      EXACTLY on its anchor: 0, or with l1_to_init the init checkpoint's;
#  (b) feature extraction (freeze = all_blocks) leaves every block tensor
#      and wpe bitwise unchanged (and their Adam moments untouched) while
#      ln_f and wte train;
#  (c) dropout 0.1 keeps strata's two promises: 6 steps + resume to 12 is
#      bitwise the uninterrupted 12 steps, and W = 1, 2, 4 (and micro-batches
#      of 2 on 1 or 2 ranks) reach the same parameters bit for bit (the issue
#      asks for 1e-5; strata's fixed summation tree gives equality). Dropout
#      is off in evaluation: the step-0 held-out loss is the one without it;
#  (d) bad values (dropout outside [0, 1), a negative lambda, an unknown
#      freeze keyword) exit 2 with one line naming the file, line and key.
. "$(dirname "$0")/lib.sh"
cmp_ckpt() { "$PYTHON" "$STRATA_SOURCE_DIR/tests/integration/compare_ckpt.py" "$@"; }

"$STRATA" pack --tokenizer byte --val-fraction 0.1 --out english $(english_files 600000) >/dev/null
cat > run.ini <<'EOF2'
[model]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 32
vocab_size = 256
[data]
new = english.h5
seq_len = 32
seed = 7
[train]
steps = 12
global_batch = 4
micro_batch = 1
lr = 3e-3
warmup = 2
; constant after the warmup: a run cut at step 6 (--set train.steps=6)
; follows the same learning rates as the uninterrupted one
schedule = constant
grad_clip = 1.0
[checkpoint]
dir = ckpt
every = 6
resume = never
[eval.old]
path = english.val.h5
max_samples = 16
EOF2
apply_family run.ini

train() { # DIR [--set ...]: a run whose checkpoints go to DIR, its log to DIR.log
  local dir=$1
  shift
  "$STRATA" train --config run.ini --set checkpoint.dir="$dir" --set log.metrics="$dir.jsonl" \
    "$@" > "$dir.log" 2>&1 || fail "$dir: exit $?: $(tail -5 "$dir.log")"
}

# Fraction of the 2-D weights of checkpoint $1 exactly equal to their anchor:
# 0, or the same tensor in checkpoint $2.
at_anchor() {
  "$PYTHON" - "$@" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as f:
    model = {n: d[()] for n, d in f["model"].items()}
anchor = None
if len(sys.argv) > 2:
    with h5py.File(sys.argv[2], "r") as f:
        anchor = {n: d[()] for n, d in f["model"].items()}
hit = total = 0
for n, x in model.items():
    if x.ndim != 2:
        continue
    a = anchor[n] if anchor else np.zeros_like(x)
    hit += int(np.sum(x == a))
    total += x.size
print(f"{hit / total:.4f}")
PY
}
above() { awk -v x="$1" -v t="$2" 'BEGIN {exit !(x > t)}'; }

# ---- (a) L1 ------------------------------------------------------------------
# A first short run makes the init checkpoint the others continue from.
train init --set train.steps=6
train plain --set model.init=init/ckpt-6.h5
train l1 --set model.init=init/ckpt-6.h5 --set train.l1=1
train l1init --set model.init=init/ckpt-6.h5 --set train.l1=1 --set train.l1_to_init=true
f_plain=$(at_anchor plain/ckpt-12.h5)
f_plain_init=$(at_anchor plain/ckpt-12.h5 init/ckpt-6.h5)
f_l1=$(at_anchor l1/ckpt-12.h5)
f_l1init=$(at_anchor l1init/ckpt-12.h5 init/ckpt-6.h5)
f_l1init_zero=$(at_anchor l1init/ckpt-12.h5)
echo "2-D weights exactly at the anchor after 6 steps: without L1 $f_plain at 0, $f_plain_init at init;" \
  "l1 = 1: $f_l1 at 0; l1 = 1 toward init: $f_l1init at init ($f_l1init_zero at 0)"
# Without L1 Adam moves every weight off both anchors: the checks below are not vacuous.
above 0.001 "$f_plain" || fail "without L1, $f_plain of the weights are exactly 0"
above 0.001 "$f_plain_init" || fail "without L1, $f_plain_init of the weights are exactly at init"
above "$f_l1" 0.5 || fail "L1 (lambda 1) put only $f_l1 of the 2-D weights exactly at 0"
above "$f_l1init" 0.5 || fail "L1 toward init put only $f_l1init of the 2-D weights exactly at init"
above 0.001 "$f_l1init_zero" || fail "L1 toward init drove $f_l1init_zero of the weights to 0"

# ---- (b) feature extraction ----------------------------------------------------
train fe --set model.init=init/ckpt-6.h5 --set train.freeze=all_blocks
"$PYTHON" - fe/ckpt-12.h5 init/ckpt-6.h5 "${FAMILY:-gpt2}" <<'PY' || fail "feature extraction changed a frozen tensor"
import sys, h5py, numpy as np
# What trains: the final norm and the lm head (GPT-2's is the tied wte).
heads = {"gpt2": ("wte.weight", "ln_f.weight", "ln_f.bias"),
         "llama": ("model.norm.weight", "lm_head.weight")}[sys.argv[3]]
with h5py.File(sys.argv[1], "r") as f, h5py.File(sys.argv[2], "r") as g:
    assert int(f.attrs["step"]) == 12
    frozen = trained = 0
    for name in f["model"]:
        a, b = f["model"][name][()], g["model"][name][()]
        if name not in heads:
            assert a.tobytes() == b.tobytes(), f"{name} changed under freeze = all_blocks"
            m, v = f["optim/m"][name][()], f["optim/v"][name][()]
            assert not m.any() and not v.any(), f"{name}: Adam moments of a frozen tensor"
            frozen += 1
        else:
            changed = float(np.mean(a != b))
            assert changed > 0.5, f"{name}: only {changed:.3f} of it trained"
            print(f"{name}: {changed:.3f} of its values changed")
            trained += 1
    print(f"feature extraction: {frozen} tensors (every block's, the embeddings) bitwise unchanged, {trained} trained")
    assert trained == len(heads) and frozen == len(f["model"]) - len(heads)
PY

# ---- (c) dropout: resume and rank count ---------------------------------------
if [ "${FAMILY:-gpt2}" = llama ]; then
  # The llama family has no dropout (none of its checkpoints use it): refused.
  expect_exit 2 "dropout is not implemented for the llama family" \
    "$STRATA" train --config run.ini --set model.dropout=0.1
  exit 0
fi
train full --set model.dropout=0.1
train nodrop --set model.dropout=0
echo -n "dropout 0.1 vs none: "
if cmp_ckpt full/ckpt-12.h5 nodrop/ckpt-12.h5 --bitwise --model-only > cmp.log; then
  fail "dropout 0.1 changed nothing"
fi
cat cmp.log
# Off in evaluation: the step-0 held-out loss (same init weights) is identical.
eval0() { "$PYTHON" -c "import json,sys
print([r['loss'] for r in map(json.loads, open(sys.argv[1])) if r.get('eval') and r['step'] == 0][0])" "$1"; }
[ "$(eval0 full.jsonl)" = "$(eval0 nodrop.jsonl)" ] ||
  fail "step-0 eval loss with dropout $(eval0 full.jsonl) != without $(eval0 nodrop.jsonl)"

train cut --set model.dropout=0.1 --set train.steps=6 --set checkpoint.resume=auto
train cut --set model.dropout=0.1 --set train.steps=12 --set checkpoint.resume=auto
grep -q "resumed from cut/ckpt-6.h5 at step 6" cut.log || fail "the second run did not resume: $(head -3 cut.log)"
echo -n "dropout 0.1, 6 steps + resume to 12 vs 12 steps: "
cmp_ckpt cut/ckpt-12.h5 full/ckpt-12.h5 --bitwise || fail "resume with dropout is not bitwise identical"

run_np() { # NAME NP MICRO
  "${MPIRUN[@]}" -np "$2" "$STRATA" train --config run.ini --set checkpoint.dir="$1" \
    --set log.metrics="$1.jsonl" --set model.dropout=0.1 --set train.micro_batch="$3" \
    > "$1.log" 2>&1 || fail "$1: exit $?: $(tail -5 "$1.log")"
}
run_np w1 1 1
run_np w2 2 1
run_np w4 4 1
run_np w1m2 1 2
run_np w2m2 2 2
for other in w2 w4; do
  echo -n "dropout 0.1, $other vs w1: "
  cmp_ckpt "$other/ckpt-12.h5" w1/ckpt-12.h5 --bitwise || fail "$other differs from the 1-rank run"
done
echo -n "dropout 0.1, w1 under mpirun vs without: "
cmp_ckpt w1/ckpt-12.h5 full/ckpt-12.h5 --bitwise || fail "mpirun -np 1 differs from a plain run"
echo -n "dropout 0.1, micro-batches of 2, w2m2 vs w1m2: "
cmp_ckpt w2m2/ckpt-12.h5 w1m2/ckpt-12.h5 --bitwise || fail "micro-batches of 2 differ across ranks"

# ---- (d) bad values ------------------------------------------------------------
# bad FILE SECTION KEY VALUE: run.ini with "KEY = VALUE" as the first line of
# [SECTION]; the message must name the file, that line and the key.
bad() {
  local file=$1 section=$2 key=$3 value=$4
  awk -v s="[$section]" -v line="$key = $value" '{print} $0 == s {print line}' run.ini > "$file"
  local n
  n=$(grep -n -x -F "$key = $value" "$file" | cut -d: -f1)
  expect_exit 2 "$file:$n: \[$section\] $key: " "$STRATA" train --config "$file"
  echo "$key = $value: $(cat err.log)"
}
bad dropout_one.ini model dropout 1.0
bad dropout_negative.ini model dropout -0.1
bad l1_negative.ini train l1 -1
bad freeze_bottom.ini train freeze bottom
grep -q "unknown freeze keyword 'bottom'" err.log || fail "freeze message: $(cat err.log)"
expect_exit 2 "set model\.dropout: .* out of range" "$STRATA" train --config run.ini --set model.dropout=1
echo "PASS"
