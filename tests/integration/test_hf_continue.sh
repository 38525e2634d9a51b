#!/usr/bin/env bash
# The continued-pretraining workflow on a Hugging Face llama-family model, end
# to end: a model exported to a HF directory with its tokenizer.json is
# imported (the checkpoint records the tokenizer's SHA-256), data is packed
# with that tokenizer, a config with no shape keys continues it, and the
# result is exported again. A shard packed with another tokenizer is refused
# with one line naming it, exit 2.
. "$(dirname "$0")/lib.sh"

# Two byte-level BPE tokenizer.json files that differ in one merge.
"$PYTHON" - <<'PY'
import json, os
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}
u = bytes_to_unicode()
vocab = {u[b]: b for b in range(256)}
for name, merges in (("tok-a", ["Ġ t", "h e"]), ("tok-b", ["Ġ t", "h e", "i n"])):
    v = dict(vocab)
    for m in merges:
        v[m.replace(" ", "")] = len(v)
    doc = {"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [{"id": len(v), "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True}],
           "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
           "post_processor": None,
           "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "ignore_merges": False, "vocab": v, "merges": merges}}
    os.makedirs(name, exist_ok=True)
    json.dump(doc, open(f"{name}/tokenizer.json", "w"))
PY
"$STRATA" pack --tokenizer tok-a/tokenizer.json --out a $(english_files 200000) > pack-a.log 2>&1 ||
  fail "pack a: $(tail -2 pack-a.log)"
"$STRATA" pack --tokenizer tok-b/tokenizer.json --out b $(english_files 200000) > pack-b.log 2>&1 ||
  fail "pack b: $(tail -2 pack-b.log)"

# A small llama-family model with 300 tokens, trained a little, exported to HF.
cat > base.ini <<'EOF2'
[model]
family = llama
n_layer = 2
n_head = 4
n_kv_head = 2
n_embd = 32
ffn_dim = 64
block_size = 64
vocab_size = 300
tied = true
[data]
new = a.h5
seq_len = 32
[train]
steps = 3
global_batch = 4
micro_batch = 2
[checkpoint]
dir = base
resume = never
EOF2
"$STRATA" train --config base.ini > base.log 2>&1 || fail "base run: $(tail -3 base.log)"
"$STRATA" export --to hf base/ckpt-3.h5 --out hf-base > export.log 2>&1 || fail "export: $(tail -2 export.log)"
cp tok-a/tokenizer.json hf-base/
"$STRATA" import --from hf hf-base --out imported.h5 > import.log 2>&1 || fail "import: $(tail -2 import.log)"

# Continue it: no shape keys, the checkpoint supplies them.
cat > cpt.ini <<'EOF2'
[model]
init = imported.h5
[data]
new = a.h5
seq_len = 32
[train]
steps = 4
global_batch = 4
micro_batch = 2
lr = 1e-3
[checkpoint]
dir = cpt
resume = never
EOF2
"$STRATA" train --config cpt.ini > cpt.log 2>&1 || fail "continued run: $(tail -3 cpt.log)"
grep -q "model llama" cpt.log || fail "no model line: $(head -3 cpt.log)"
expect_exit 2 "b.h5: packed with tokenizer .*, but the model's is" \
  "$STRATA" train --config cpt.ini --set data.new=b.h5 --set checkpoint.dir=cpt-b
[ "$(wc -l < err.log)" -eq 1 ] || fail "more than one line: $(cat err.log)"
# The origin survives training: the continued checkpoint still refuses b.
expect_exit 2 "packed with tokenizer" "$STRATA" train --config cpt.ini --set model.init=cpt/ckpt-4.h5 \
  --set data.new=b.h5 --set checkpoint.dir=cpt-b2
# A shape key that disagrees with the init checkpoint is an error naming it.
expect_exit 2 "\[model\] n_layer is 3 in the config but 2 in init checkpoint" \
  "$STRATA" train --config cpt.ini --set model.n_layer=3 --set checkpoint.dir=cpt-c

"$STRATA" export --to hf cpt/ckpt-4.h5 --out hf-cpt > export2.log 2>&1 || fail "export: $(tail -2 export2.log)"
"$PYTHON" - hf-cpt <<'PY' || fail "exported directory"
import json, sys
c = json.load(open(sys.argv[1] + "/config.json"))
assert c["model_type"] == "llama" and c["num_hidden_layers"] == 2 and c["num_key_value_heads"] == 2, c
assert c["tie_word_embeddings"] is True and c["vocab_size"] == 300, c
print("exported:", {k: c[k] for k in ("model_type", "hidden_size", "num_attention_heads", "vocab_size")})
PY
echo PASS
