#!/usr/bin/env bash
# Bad input of every kind gets one clear line naming the file and the
# problem, and exit status 2: never a crash, a hang or a silent answer.
. "$(dirname "$0")/lib.sh"

# A good shard to start from, and a config that trains on it.
"$PYTHON" - <<'PY'
import h5py, numpy as np
def shard(path, tokens, dtype="uint16", vocab=256, fmt="strata-tokens-1", dataset="tokens"):
    with h5py.File(path, "w") as f:
        d = f.create_dataset(dataset, data=np.asarray(tokens, dtype=dtype), chunks=True)
        d.attrs["vocab_size"] = vocab
        d.attrs["eot_token"] = 0
        d.attrs["tokenizer"] = "byte"
        d.attrs["format"] = fmt
rng = np.random.default_rng(0)
shard("good.h5", rng.integers(1, 256, 20000))
# 6 samples of 32+1 tokens; a 3-step run of 2 sequences reads all of them.
shard("big_token.h5", np.concatenate([rng.integers(1, 256, 100), [300], rng.integers(1, 256, 92)]), vocab=256, dtype="uint16")
shard("wrong_type.h5", rng.integers(1, 100, 20000), dtype="int8")
shard("no_tokens.h5", rng.integers(1, 256, 20000), dataset="words")
shard("short.h5", rng.integers(1, 256, 10))
shard("big_vocab.h5", rng.integers(1, 256, 20000), vocab=70000, dtype="uint32")
PY
echo "this is not HDF5" > text.h5
head -c 3000 good.h5 > truncated.h5

cat > base.ini <<'EOF2'
[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 32
vocab_size = 256
[data]
new = good.h5
seq_len = 32
[train]
steps = 2
global_batch = 2
micro_batch = 2
[checkpoint]
dir = ckpt
resume = never
EOF2

train() { "$STRATA" train --config "$@"; }

# The good config trains (so the failures below are about what we changed).
"$STRATA" train --config base.ini >/dev/null 2>err.log || fail "good config failed: $(cat err.log)"

expect_exit 2 "missing.ini.*cannot open" train missing.ini
mkdir -p config_dir.ini
expect_exit 2 "config_dir.ini: cannot read config: Is a directory" train config_dir.ini
expect_exit 2 "config_dir.ini: cannot read config: Is a directory" "$STRATA" bench --config config_dir.ini
printf '[model]\nn_layer = 1\nn_layers = 2\n' > unknown_key.ini
expect_exit 2 "unknown_key.ini:3: \[model\] n_layers: unknown key" train unknown_key.ini
printf '[modle]\nn_layer = 1\n' > unknown_section.ini
expect_exit 2 "unknown_section.ini:2: \[modle\] n_layer: unknown section" train unknown_section.ini
sed 's/^steps = 2/steps = two/' base.ini > bad_value.ini
expect_exit 2 "bad_value.ini:11: \[train\] steps: 'two' is not a number" train bad_value.ini
sed 's/^seq_len = 32/seq_len = -5/' base.ini > out_of_range.ini
expect_exit 2 "out_of_range.ini:9: \[data\] seq_len: -5 is out of range" train out_of_range.ini
expect_exit 2 "--set train.lr: 'fast' is not a number" train base.ini --set train.lr=fast
expect_exit 2 "--set nokey: expected section.key=value" train base.ini --set nokey
expect_exit 2 "unexpected argument '--frobnicate'" "$STRATA" train --config base.ini --frobnicate
expect_exit 2 "missing --config" "$STRATA" train
expect_exit 2 "unknown command 'trian'" "$STRATA" trian

# Data files: each named in the message with its problem.
for case in missing text truncated wrong_type no_tokens short big_vocab; do
  expect_exit 2 "$case.h5" train base.ini --set data.new="$case.h5"
done
expect_exit 2 "big_token.h5.*300" train base.ini --set data.new=big_token.h5 --set train.steps=3
echo "bad input: all cases gave exit 2 and one line naming the file"
