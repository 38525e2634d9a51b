#!/usr/bin/env bash
# `strata import` and `strata export` round trip GPT-2 weights byte for byte
# (llm.c -> checkpoint -> llm.c; Hugging Face -> checkpoint -> safetensors ->
# checkpoint -> llm.c equals the llm.c fixture of the same weights), write
# checkpoints h5py can read, and refuse bad files and bad usage with exit 2
# and one line naming the file.
source "$(dirname "$0")/lib.sh"

fixtures=$STRATA_SOURCE_DIR/tests/fixtures
llmc=$fixtures/llmc_tiny.bin
hf=$fixtures/hf_tiny.safetensors

# llm.c -> strata -> llm.c is the identity.
"$STRATA" import --from llmc "$llmc" --out llmc.h5 >out.log
grep -q "2 layers, 2 heads, 32 channels, block_size 16, vocab_size 67" out.log ||
  fail "import did not report the shape: $(cat out.log)"
"$STRATA" export --to llmc llmc.h5 --out again.bin >/dev/null
cmp "$llmc" again.bin || fail "llm.c import -> export is not byte-identical"

# Hugging Face -> strata -> safetensors -> strata -> llm.c: the same weights
# as the llm.c fixture, so the same bytes.
"$STRATA" import --from safetensors "$hf" --n-head 2 --out hf.h5 >/dev/null
"$STRATA" export --to safetensors hf.h5 --out hf.safetensors >/dev/null
"$STRATA" import --from=safetensors hf.safetensors --out=hf2.h5 >/dev/null # n_head from metadata
"$STRATA" export --to llmc hf2.h5 -o hf.bin >/dev/null
cmp "$llmc" hf.bin || fail "the HF fixture did not convert to the llm.c fixture's bytes"

# The checkpoint is plain HDF5: h5py reads the model, with Fletcher32 on every
# dataset and no optimizer state.
"$PYTHON" - <<'EOF' || fail "h5py could not read the imported checkpoint"
import h5py, json, numpy as np
f = h5py.File("hf.h5", "r")
assert f.attrs["format"] == b"strata-ckpt-1", f.attrs["format"]
assert [int(f.attrs[k]) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")] \
    == [2, 2, 32, 16, 67]
assert "optim" not in f
assert json.loads(f.attrs["extra_json"])["import"]["from"] == "safetensors"
names = []
f["model"].visit(names.append)
assert len(names) == 4 + 12 * 2, names
for n in names:
    assert f["model"][n].fletcher32, n
assert f["model/wte.weight"].shape == (67, 32)
# Conv1D (in, out) became strata's (out, in).
assert f["model/h.0.attn.c_attn.weight"].shape == (96, 32)
EOF

# Bad files: exit 2, one line naming the file.
head -c 5000 "$llmc" >cut.bin
expect_exit 2 "cut.bin: .*bytes, but its header" "$STRATA" import --from llmc cut.bin --out x.h5
head -c 700 "$llmc" >short.bin
expect_exit 2 "short.bin: .*header" "$STRATA" import --from llmc short.bin --out x.h5
head -c 50000 "$hf" >cut.safetensors
expect_exit 2 "cut.safetensors: .*past the end" \
  "$STRATA" import --from safetensors cut.safetensors --n-head 2 --out x.h5
expect_exit 2 "hf_tiny.safetensors: .*HINT: pass --n-head" \
  "$STRATA" import --from safetensors "$hf" --out x.h5
printf 'not weights at all' >junk.bin
expect_exit 2 "junk.bin: .*header" "$STRATA" import --from llmc junk.bin --out x.h5
expect_exit 2 "junk.bin: .*too short|junk.bin: .*runs past" \
  "$STRATA" import --from safetensors junk.bin --n-head 2 --out x.h5
expect_exit 2 "hf_tiny.safetensors: not an llm.c model file" \
  "$STRATA" import --from llmc "$hf" --out x.h5
expect_exit 2 "missing.bin: cannot open" "$STRATA" import --from llmc missing.bin --out x.h5
[ ! -e x.h5 ] || fail "a failed import left x.h5 behind"
expect_exit 2 "junk.bin: not a readable HDF5 file" "$STRATA" export --to llmc junk.bin --out y.bin
head -c 20000 llmc.h5 >cut.h5
expect_exit 2 "cut.h5: .*truncated" "$STRATA" export --to safetensors cut.h5 --out y.safetensors
[ ! -e y.bin ] && [ ! -e y.safetensors ] || fail "a failed export left a file behind"

# Bad usage: exit 2 with a hint.
expect_exit 2 "import: .*out FILE is required" "$STRATA" import --from llmc "$llmc"
expect_exit 2 "unknown format 'gguf'" "$STRATA" import --from gguf "$llmc" --out x.h5
expect_exit 2 "export: .*to llmc.safetensors.hf is required" "$STRATA" export llmc.h5 --out y.bin
expect_exit 2 "unknown option '--n-head'" "$STRATA" export --to llmc llmc.h5 --out y.bin --n-head 2
expect_exit 2 "no input file given" "$STRATA" export --to llmc --out y.bin
expect_exit 2 "import: .*n-head must be > 0" "$STRATA" import --from safetensors "$hf" --n-head x --out x.h5

# Not the user's fault: a directory that does not exist is exit 1.
expect_exit 1 "no/such/dir/y.bin: cannot create" "$STRATA" export --to llmc llmc.h5 --out no/such/dir/y.bin

echo "PASS: import/export round trips and refusals"
