#!/usr/bin/env bash
# Downstream multiple-choice evaluation ([eval.NAME] kind = choice): a tiny
# byte-level model pretrained on English prose (data A) scores choice items
# built from A (the true next 24 bytes against two 24-byte stretches of C
# code) far above chance; continued training on C
# headers (data B) alone makes that accuracy drop, and the drop is reported
# as forgetting in the metrics (every eval_every steps, against the step-0
# baseline) and in `strata report`'s table and plot. `strata eval` on 2 ranks
# gives the 1-rank figures; a malformed jsonl line, a choice set without a
# tokenizer or an unknown kind is one line and exit 2.
. "$(dirname "$0")/lib.sh"

"$STRATA" pack --tokenizer byte --out english $(english_files 1500000) >/dev/null
"$STRATA" pack --tokenizer byte --out code $(code_files 1500000) >/dev/null

# 96 items from A (tests/make_choice_cloze.py): 48 bytes of prose as the
# context, the true next 24 bytes and two 24-byte stretches of C code; the
# first 32 in HellaSwag's format, the rest plain.
"$PYTHON" "$STRATA_SOURCE_DIR/tests/make_choice_cloze.py" --text english.h5 --distractors code.h5 \
  --items 96 --hellaswag 32 --out hs.jsonl

cat > base.ini <<'EOF2'
[model]
n_layer = 2
n_head = 4
n_embd = 64
block_size = 96
vocab_size = 256
[data]
new = english.h5
seq_len = 64
seed = 5
[train]
steps = 250
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
[eval.hs]
kind = choice
path = hs.jsonl
tokenizer = byte
EOF2
"$STRATA" train --config base.ini --set log.metrics=pre.jsonl > pre.log 2>&1 || fail "pretraining failed: $(tail -3 pre.log)"
cont=(--config base.ini --set model.init=pre/ckpt-250.h5 --set data.new=code.h5 --set train.steps=150
  --set train.lr=1e-2 --set train.warmup=5 --set train.min_lr=1e-2 --set log.eval_every=50
  --set checkpoint.every=100)
"$STRATA" train "${cont[@]}" --set checkpoint.dir=cont --set log.metrics=cont.jsonl > cont.log 2>&1 ||
  fail "continued training failed: $(tail -3 cont.log)"
grep -E "^eval hs" cont.log
# Resumed from step 100, the run keeps its step-0 baseline (carried in the checkpoint).
"$STRATA" train "${cont[@]}" --set checkpoint.resume=cont/ckpt-100.h5 --set checkpoint.dir=resumed \
  --set log.metrics=resumed.jsonl > resumed.log 2>&1 || fail "resumed training failed: $(tail -3 resumed.log)"
"$PYTHON" - <<'PY' || fail "the resumed run's choice record differs"
import json
def hs(path, step):
    return [r for r in map(json.loads, open(path)) if r.get("eval") == "hs" and r["step"] == step][0]
a, b = hs("cont.jsonl", 150), hs("resumed.jsonl", 150)
assert a == b, (a, b)
print("resumed from step 100: step-150 record identical, baseline", b["baseline"])
PY

"$PYTHON" - <<'PY' || fail "the choice accuracy's drop is not reported as forgetting in cont.jsonl"
import json
recs = [r for r in map(json.loads, open("cont.jsonl")) if r.get("eval") == "hs"]
steps = [r["step"] for r in recs]
assert steps == [0, 50, 100, 150], steps
base = recs[0]
assert all(r["kind"] == "choice" and r["n_items"] == 96 for r in recs)
assert all(r["baseline"] == base["acc"] for r in recs), "baseline is not the step-0 accuracy"
last = recs[-1]
print(f"choice acc: step 0 (after English) {base['acc']:.4f}, step 150 (after code) {last['acc']:.4f}; "
      f"forgetting {last['forgetting']:.4f}; acc_norm {base['acc_norm']:.4f} -> {last['acc_norm']:.4f}")
assert base["acc"] > 0.6, "the English model does not beat chance (1/3) on its own text"
assert last["acc"] < base["acc"] - 0.15, "accuracy did not drop"
assert abs(last["forgetting"] - (base["acc"] - last["acc"])) < 1e-5
assert recs[0]["forgetting"] == 0
PY

# The report draws it and counts it as forgetting.
"$STRATA" report cont.jsonl --out report > report.log 2>&1 || fail "strata report failed: $(cat report.log)"
grep -F "| cont | hs | 0 |" report/summary.md || fail "no choice row in summary.md: $(cat report/summary.md)"
"$PYTHON" - <<'PY' || fail "summary.md's forgetting is not the drop"
import json
recs = [r for r in map(json.loads, open("cont.jsonl")) if r.get("eval") == "hs"]
row = [l for l in open("report/summary.md") if l.startswith("| cont | hs |")][0]
cells = [c.strip() for c in row.strip().strip("|").split("|")]
forgetting = float(cells[-1])
assert abs(forgetting - (recs[0]["acc"] - recs[-1]["acc"])) < 1e-4 and forgetting > 0.15, cells
print("summary.md:", row.strip())
PY
grep -q "multiple-choice accuracy: hs" report/report.gp || fail "report.gp draws no choice plot"
if command -v gnuplot >/dev/null; then
  [ -s report/eval-hs.svg ] && [ -s report/eval-hs.png ] || fail "no eval-hs plot drawn"
fi

# strata eval on any checkpoint: 2 ranks split the items and agree with 1,
# and with what the training run logged at that step.
"$STRATA" eval --config base.ini --checkpoint cont/ckpt-150.h5 > eval1.log 2>&1 || fail "strata eval failed: $(cat eval1.log)"
"${MPIRUN[@]}" -np 2 "$STRATA" eval --config base.ini --checkpoint cont/ckpt-150.h5 > eval2.log 2>&1 ||
  fail "strata eval on 2 ranks failed: $(cat eval2.log)"
grep -E "^eval hs" eval1.log eval2.log
"$PYTHON" - <<'PY' || fail "strata eval on 1 rank, on 2 ranks and the training run disagree"
import json, re
def printed(path):
    line = [l for l in open(path) if l.startswith("eval hs")][-1]
    return re.search(r"\| acc (\S+) \| acc_norm (\S+) \|.*\| (\d+) items", line).groups()
run = [r for r in map(json.loads, open("cont.jsonl")) if r.get("eval") == "hs" and r["step"] == 150][0]
want = (f"{run['acc']:.4f}", f"{run['acc_norm']:.4f}", str(run["n_items"]))
assert printed("eval1.log") == printed("eval2.log") == want, (printed("eval1.log"), printed("eval2.log"), want)
print(f"strata eval: acc {want[0]} acc_norm {want[1]} on 1 and 2 ranks, as logged at step 150")
PY

# Bad input: one line, exit 2, naming the file and the line.
printf '{"context": "a", "choices": [" b", " c"], "answer": 0}\n{"context": "a", "choices": [" b"], "answer": 0}\n' > bad.jsonl
expect_exit 2 "bad.jsonl:2: \"choices\" must be an array of 2 to 64 strings" \
  "$STRATA" eval --config base.ini --set eval.hs.path=bad.jsonl --checkpoint cont/ckpt-150.h5
printf '{"context": "a", "choices": [" b", " c"], "answer": 0}\n{"context": "a", "choices": [" b", " c"], "answer": 0\n' > bad2.jsonl
expect_exit 2 "bad2.jsonl:2: not valid JSON" \
  "$STRATA" eval --config base.ini --set eval.hs.path=bad2.jsonl --checkpoint cont/ckpt-150.h5
expect_exit 2 "bad2.jsonl:2: not valid JSON" \
  "$STRATA" train --config base.ini --set eval.hs.path=bad2.jsonl --set checkpoint.dir=bad
sed '/^tokenizer/d' base.ini > notok.ini
expect_exit 2 "notok.ini: \[eval.hs\] kind = choice needs tokenizer" \
  "$STRATA" eval --config notok.ini --checkpoint cont/ckpt-150.h5
sed 's/^kind = choice/kind = quiz/' base.ini > badkind.ini
expect_exit 2 "badkind.ini:[0-9]+: \[eval.hs\] kind: unknown kind 'quiz'" \
  "$STRATA" eval --config badkind.ini --checkpoint cont/ckpt-150.h5
echo "test_choice_eval: ok"
