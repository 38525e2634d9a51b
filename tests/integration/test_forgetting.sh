#!/usr/bin/env bash
# Anti-forgetting is real, on two distinct real corpora (English prose and C
# headers): after continued training on code, 25 % replay of English keeps
# the English held-out loss lower than 0 % replay at the same step count;
# L2-SP with a large alpha keeps the weights within a measured distance of
# the init; frozen blocks stay bitwise unchanged; EWC runs from a Fisher file.
. "$(dirname "$0")/lib.sh"

"$STRATA" pack --tokenizer byte --val-fraction 0.05 --out english $(english_files 2000000) >/dev/null
"$STRATA" pack --tokenizer byte --val-fraction 0.05 --out code $(code_files 2000000) >/dev/null
cat > base.ini <<'EOF2'
[model]
n_layer = 2
n_head = 4
n_embd = 64
block_size = 64
vocab_size = 256
[data]
new = english.h5
seq_len = 64
seed = 5
[train]
steps = 300
global_batch = 16
micro_batch = 16
lr = 3e-3
min_lr = 3e-4
warmup = 20
[checkpoint]
dir = pre
resume = never
[log]
eval_every = 0
[eval.old]
path = english.val.h5
max_samples = 128
[eval.new]
path = code.val.h5
max_samples = 128
EOF2
"$STRATA" train --config base.ini --set log.metrics=pre.jsonl > pre.log 2>&1 || fail "pretraining failed: $(tail -3 pre.log)"

cont() { # name [--set ...]
  local name=$1
  shift
  "$STRATA" train --config base.ini --set model.init=pre/ckpt-300.h5 --set data.new=code.h5 \
    --set data.replay=english.h5 --set train.steps=150 --set checkpoint.dir="$name" \
    --set log.metrics="$name.jsonl" "$@" > "$name.log" 2>&1 || fail "$name failed: $(tail -3 "$name.log")"
}
cont replay0 --set data.replay_ratio=0
cont replay25 --set data.replay_ratio=0.25
old0=$(last_eval_loss replay0.jsonl old)
old25=$(last_eval_loss replay25.jsonl old)
new0=$(last_eval_loss replay0.jsonl new)
new25=$(last_eval_loss replay25.jsonl new)
echo "old-set loss after 150 steps on code: 0% replay $old0, 25% replay $old25 (new-set: $new0, $new25)"
"$PYTHON" -c "import sys; sys.exit(not ($old25 < $old0))" || fail "25% replay did not forget less"

# L2-SP: a large alpha holds the weights near the init.
cont l2sp --set data.replay_ratio=0 --set train.l2sp=100
"$PYTHON" - <<'PY' || fail "L2-SP did not keep the weights near the init"
import h5py, numpy as np
def dist(path):
    with h5py.File("pre/ckpt-300.h5") as a, h5py.File(path) as b:
        return np.sqrt(sum(float(np.sum((a["model"][k][()] - b["model"][k][()]) ** 2)) for k in a["model"]))
free, held = dist("replay0/ckpt-150.h5"), dist("l2sp/ckpt-150.h5")
print(f"||theta - theta0||: {free:.4f} without L2-SP, {held:.4f} with alpha = 100")
assert held < 0.5 * free
PY

# Freezing the lower block: its tensors are bitwise unchanged.
cont frozen --set data.replay_ratio=0 --set train.freeze=blocks:1
"$PYTHON" - <<'PY' || fail "a frozen block changed"
import h5py, numpy as np
with h5py.File("pre/ckpt-300.h5") as a, h5py.File("frozen/ckpt-150.h5") as b:
    frozen = [k for k in a["model"] if k.startswith("h.0.") or k in ("wte.weight", "wpe.weight")]
    for k in frozen:
        assert a["model"][k][()].tobytes() == b["model"][k][()].tobytes(), k
    moved = [k for k in a["model"] if k.startswith("h.1.") and a["model"][k][()].tobytes() != b["model"][k][()].tobytes()]
    assert moved, "nothing trained"
print(f"frozen: {len(frozen)} tensors bitwise unchanged; {len(moved)} tensors of h.1 trained")
PY

# EWC: a Fisher estimate on the old data, then a run that uses it.
"$STRATA" fisher --config base.ini --set model.init=pre/ckpt-300.h5 --samples 64 --out fisher.h5 > fisher.log 2>&1 ||
  fail "strata fisher failed: $(tail -3 fisher.log)"
cont ewc --set data.replay_ratio=0 --set train.ewc=1000 --set train.fisher=fisher.h5
oldewc=$(last_eval_loss ewc.jsonl old)
echo "old-set loss with EWC (lambda 1000): $oldewc"
"$PYTHON" -c "import sys; sys.exit(not ($oldewc < $old0))" || fail "EWC did not forget less than plain training"
