#!/usr/bin/env bash
# `strata import --from hf DIR` and `strata export --to hf CKPT --out DIR`:
# a Hugging Face GPT-2 directory comes in with the fixture's exact weights and
# goes out with hub names, Conv1D layout, the config's token ids and no
# lm_head; BF16 export rounds exactly as torch does; sharded exports import
# back to the same bytes; a BF16 sharded directory written by a separate
# (Python) writer imports; bad directories and bad usage exit 2 with one line.
source "$(dirname "$0")/lib.sh"

fixtures=$STRATA_SOURCE_DIR/tests/fixtures
hf=$fixtures/hf_tiny.safetensors
llmc=$fixtures/llmc_tiny.bin

mkdir hub
cp "$hf" hub/model.safetensors
cat >hub/config.json <<'EOF'
{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 32, "n_layer": 2,
 "n_head": 2, "n_positions": 16, "n_ctx": 16, "vocab_size": 67, "bos_token_id": 66,
 "eos_token_id": 66, "activation_function": "gelu_new"}
EOF

"$STRATA" import --from hf hub --out hub.h5 >out.log
grep -q "2 layers, 2 heads, 32 channels, block_size 16, vocab_size 67" out.log ||
  fail "import did not report the shape: $(cat out.log)"
"$STRATA" export --to hf hub.h5 --out out32 >/dev/null
"$STRATA" export --to hf hub.h5 --out out16 --dtype bf16 >/dev/null
"$STRATA" export --to=hf hub.h5 --out=sharded --max-shard-bytes 30000 >/dev/null

# A small safetensors reader and writer, and the checks on what strata wrote.
"$PYTHON" - "$hf" <<'EOF' || fail "the exported directories are not what transformers expects"
import json, os, struct, sys
import numpy as np, torch

def read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    out = {}
    for k, v in h.items():
        s, e = v["data_offsets"]
        raw = b[8 + n + s:8 + n + e]
        dt = {"F32": np.float32, "BF16": np.uint16, "F16": np.float16}[v["dtype"]]
        out[k] = (v["dtype"], np.frombuffer(raw, dtype=dt).reshape(v["shape"]))
    return out

ref = {k.removeprefix("transformer."): a for k, (d, a) in read(sys.argv[1]).items()
       if not k.endswith(".attn.bias") and k != "lm_head.weight"}
got = read("out32/model.safetensors")
assert set(got) == set(ref), sorted(set(got) ^ set(ref))
for k, (d, a) in got.items():
    assert d == "F32" and a.shape == ref[k].shape and a.tobytes() == ref[k].tobytes(), k
cfg = json.load(open("out32/config.json"))
assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"], cfg
assert (cfg["n_embd"], cfg["n_layer"], cfg["n_head"], cfg["n_positions"], cfg["vocab_size"]) \
    == (32, 2, 2, 16, 67), cfg
assert cfg["eos_token_id"] == 66 and cfg["bos_token_id"] == 66, cfg
assert cfg["torch_dtype"] == "float32" and cfg["tie_word_embeddings"] is True, cfg

# BF16: exactly torch's rounding of the same fp32 values.
got16 = read("out16/model.safetensors")
assert json.load(open("out16/config.json"))["torch_dtype"] == "bfloat16"
for k, (d, a) in got16.items():
    want = torch.from_numpy(ref[k].copy()).to(torch.bfloat16).view(torch.int16).numpy()
    assert d == "BF16" and a.view(np.int16).tobytes() == want.tobytes(), k

# Sharded: an index naming every tensor, each shard at most 30000 bytes
# unless it holds one tensor.
idx = json.load(open("sharded/model.safetensors.index.json"))
assert set(idx["weight_map"]) == set(ref), idx
files = sorted(set(idx["weight_map"].values()))
assert len(files) >= 3 and not os.path.exists("sharded/model.safetensors"), files
for f in files:
    t = read("sharded/" + f)
    assert all(idx["weight_map"][k] == f for k in t), f
    assert os.path.getsize("sharded/" + f) <= 30000 + 4096 or len(t) == 1, f

# A BF16 checkpoint in two shards, written here (as transformers would).
def write(path, tensors):
    header, off, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for k, (d, a) in tensors.items():
        raw = a.tobytes()
        header[k] = {"dtype": d, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    h = json.dumps(header).encode()
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))

os.makedirs("hub16", exist_ok=True)
names = sorted(ref)
bf = {k: ("BF16", torch.from_numpy(ref[k].copy()).to(torch.bfloat16).view(torch.int16).numpy())
      for k in names}
half = len(names) // 2
wm = {}
for i, part in enumerate((names[:half], names[half:])):
    f = f"model-{i + 1:05d}-of-00002.safetensors"
    write("hub16/" + f, {k: bf[k] for k in part})
    wm.update({k: f for k in part})
json.dump({"metadata": {"total_size": 0}, "weight_map": wm},
          open("hub16/model.safetensors.index.json", "w"))
json.dump(cfg | {"torch_dtype": "bfloat16"}, open("hub16/config.json", "w"))
EOF

# Sharded export -> import -> llm.c export: the llm.c fixture's bytes.
"$STRATA" import --from hf sharded --out sharded.h5 >/dev/null
"$STRATA" export --to llmc sharded.h5 --out sharded.bin >/dev/null
cmp "$llmc" sharded.bin || fail "hf (sharded) -> checkpoint -> llm.c is not the llm.c fixture"

# The BF16 shards come in as the widened values: export f32 and compare.
"$STRATA" import --from hf hub16 --out hub16.h5 >/dev/null
"$STRATA" export --to hf hub16.h5 --out hub16-out >/dev/null
"$STRATA" export --to hf hub16.h5 --out hub16-bf --dtype bf16 >/dev/null
"$PYTHON" - <<'EOF' || fail "BF16 shards did not import as their values"
import json, struct
import numpy as np
def read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items()}
f32, bf = read("hub16-out/model.safetensors"), read("hub16-bf/model.safetensors")
for k in f32:
    wide = np.frombuffer(f32[k], np.uint32)
    assert not (wide & 0xffff).any(), k          # every value is a bf16
    assert ((wide >> 16).astype(np.uint16).tobytes()) == bf[k], k  # and rounds to itself
EOF

# Bad directories: exit 2, one line naming the file and the place.
mkdir empty
expect_exit 2 "empty/config.json: cannot open" "$STRATA" import --from hf empty --out x.h5
mkdir noweights
cp hub/config.json noweights/
expect_exit 2 "noweights: holds neither model.safetensors nor model.safetensors.index.json" \
  "$STRATA" import --from hf noweights --out x.h5
mkdir yarn
cp "$hf" yarn/model.safetensors
cat >yarn/config.json <<'EOF'
{"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
 "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 128,
 "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
EOF
expect_exit 2 "yarn/config.json: \"rope_scaling.rope_type\" is 'yarn'" \
  "$STRATA" import --from hf yarn --out x.h5
sed -i 's/"yarn", "factor": 4.0/"default"/; s/"num_hidden_layers": 2,/"num_hidden_layers": 2, "num_local_experts": 8,/' yarn/config.json
expect_exit 2 "\"num_local_experts\" is 8: mixture-of-experts" "$STRATA" import --from hf yarn --out x.h5
mkdir cut
cp hub/config.json cut/
head -c 30000 "$hf" >cut/model.safetensors
expect_exit 2 "cut/model.safetensors: .*past the end" "$STRATA" import --from hf cut --out x.h5
mkdir wide
cp "$hf" wide/model.safetensors
sed 's/"n_positions": 16/"n_positions": 32/' hub/config.json >wide/config.json
expect_exit 2 "wide/model.safetensors: tensor 'transformer.wpe.weight' has shape \[16, 32\], expected \[32, 32\]" \
  "$STRATA" import --from hf wide --out x.h5
[ ! -e x.h5 ] || fail "a failed import left x.h5 behind"

# Bad usage: exit 2.
expect_exit 2 "export: --dtype must be f32 or bf16" "$STRATA" export --to hf hub.h5 --out y --dtype f16
expect_exit 2 "export: --dtype and --max-shard-bytes are for --to hf" \
  "$STRATA" export --to llmc hub.h5 --out y.bin --dtype bf16
expect_exit 2 "export: --max-shard-bytes must be > 0" \
  "$STRATA" export --to hf hub.h5 --out y --max-shard-bytes 0
expect_exit 2 "import: --n-head is for --from safetensors" \
  "$STRATA" import --from hf hub --out x.h5 --n-head 2
[ ! -e y ] && [ ! -e y.bin ] || fail "a refused export left output behind"
touch afile
expect_exit 2 "afile: not a directory" "$STRATA" export --to hf hub.h5 --out afile

echo "PASS: Hugging Face directories in and out"
