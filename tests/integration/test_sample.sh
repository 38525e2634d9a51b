#!/usr/bin/env bash
# strata sample on a tiny byte-level GPT-2 trained here on English text:
# - prompted with a sentence of its training corpus, its continuation (sampled,
#   temperature 0.8) is text the model recognises: under an independent numpy
#   forward of the checkpoint, its loss is below that of the same bytes shuffled;
# - [log] sample_every prints, at a step, exactly the text `strata sample` writes
#   from that step's checkpoint with the same settings (its fixed seed);
# - --n 2 gives two different samples; the same seed the same text;
# - bad checkpoint, prompt longer than the context, temperature < 0, top-p 0, no
#   tokenizer for the model: one line on stderr, exit 2.
. "$(dirname "$0")/lib.sh"

"$STRATA" pack --tokenizer byte --val-fraction 0.02 --out english $(english_files 1500000) > pack.log
# configs/tiny.ini cut to 2 layers and 200 steps of 8 x 64 bytes (~2.6 nats/byte).
OMP_NUM_THREADS=$(nproc) "$STRATA" train --config "$STRATA_SOURCE_DIR/configs/tiny.ini" \
  --set data.new="$PWD/english.h5" --set eval.val.path="$PWD/english.val.h5" \
  --set eval.val.max_samples=16 --set model.n_layer=2 --set data.seq_len=64 \
  --set train.global_batch=8 --set train.micro_batch=8 --set train.steps=200 \
  --set train.warmup=20 --set checkpoint.dir="$PWD/ckpt" --set checkpoint.every=100 \
  --set checkpoint.keep=0 --set log.metrics="$PWD/metrics.jsonl" --set log.sample_every=100 \
  --set 'log.sample_prompt=The Licensee may' --set checkpoint.resume=never \
  > train.log 2>&1 || fail "training failed: $(tail -5 train.log)"
grep -a '^sample step' train.log | cut -c1-120
[ "$(grep -ac '^sample step' train.log)" -eq 3 ] || fail "expected samples at steps 0, 100, 200"

# The trainer's sample at step 100 is the CLI's from ckpt-100 (same prompt, seed, settings).
"$STRATA" sample --checkpoint ckpt/ckpt-100.h5 --prompt 'The Licensee may' --tokens 64 \
  --temperature 0.8 --top-p 0.95 --seed 1234 > cli100.txt 2> err.log || fail "sample: $(cat err.log)"
"$PYTHON" - train.log cli100.txt <<'PY' || fail "the trainer's sample differs from strata sample's"
import sys
log = [l for l in open(sys.argv[1], encoding="latin-1") if l.startswith("sample step 100: ")]
want = log[0][len("sample step 100: "):].rstrip("\n")
text = open(sys.argv[2], "rb").read()[:-1]  # the CLI ends with a newline
esc = "".join({10: "\\n", 9: "\\t", 92: "\\\\"}.get(b) or
              (f"\\x{b:02x}" if b < 32 or b == 127 else chr(b)) for b in text)
print(f"trainer step 100: {want[:70]!r}...\nstrata sample:    {esc[:70]!r}...")
sys.exit(want != esc)
PY

# A sentence of the corpus (GPL-3 is in it): the continuation against its own bytes shuffled.
prompt="General Public License does not permit incorporating your program"
grep -q "$prompt" /usr/share/common-licenses/GPL-3 || fail "GPL-3 changed"
"$STRATA" sample --checkpoint ckpt/ckpt-200.h5 --prompt "$prompt" --tokens 48 \
  --temperature 0.8 --seed 7 > cont.txt 2> err.log || fail "sample: $(cat err.log)"
echo "continuation: $(cat cont.txt)"
"$PYTHON" - ckpt/ckpt-200.h5 cont.txt "$prompt" <<'PY' || fail "the continuation is not below shuffled text"
import sys
import h5py
import numpy as np

f = h5py.File(sys.argv[1], "r")
W = {k: f["model"][k][()].astype(np.float64) for k in f["model"]}
L, NH = int(f.attrs["n_layer"]), int(f.attrs["n_head"])
prompt = sys.argv[3].encode()
out = open(sys.argv[2], "rb").read()[:-1]
assert out.startswith(prompt), "the output does not start with the prompt"
cont = out[len(prompt):]
assert len(cont) >= 16, f"continuation of {len(cont)} bytes"

def ln(x, w, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * w + b

def logits(ids):
    T = len(ids)
    x = W["wte.weight"][ids] + W["wpe.weight"][:T]
    C = x.shape[1]
    hs = C // NH
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(L):
        p = lambda n: W[f"h.{l}.{n}"]
        h = ln(x, p("ln_1.weight"), p("ln_1.bias"))
        qkv = h @ p("attn.c_attn.weight").T + p("attn.c_attn.bias")
        q, k, v = (qkv[:, i * C:(i + 1) * C].reshape(T, NH, hs).transpose(1, 0, 2) for i in range(3))
        a = q @ k.transpose(0, 2, 1) / np.sqrt(hs) + mask
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = (a @ v).transpose(1, 0, 2).reshape(T, C)
        x = x + y @ p("attn.c_proj.weight").T + p("attn.c_proj.bias")
        h = ln(x, p("ln_2.weight"), p("ln_2.bias"))
        h = h @ p("mlp.c_fc.weight").T + p("mlp.c_fc.bias")
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
        x = x + h @ p("mlp.c_proj.weight").T + p("mlp.c_proj.bias")
    return ln(x, W["ln_f.weight"], W["ln_f.bias"]) @ W["wte.weight"].T

def loss(tail):
    ids = [0] + list(prompt) + list(tail)  # the EOT pack puts before a document, as sample does
    z = logits(ids[:-1])
    z = z - z.max(-1, keepdims=True)
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    n = len(prompt) + 1
    return -np.mean([lp[t - 1, ids[t]] for t in range(n, len(ids))])

shuffled = bytes(np.random.default_rng(0).permutation(np.frombuffer(cont, np.uint8)))
a, b = loss(cont), loss(shuffled)
print(f"continuation loss {a:.3f} nats/byte, shuffled {b:.3f} ({len(cont)} bytes)")
sys.exit(not a < b - 0.5)
PY

# --n 2: two samples, different; the same seed again: the same text.
"$STRATA" sample --checkpoint ckpt/ckpt-200.h5 --prompt "The " --tokens 32 --n 2 > two.txt
grep -c '^--- sample' two.txt | grep -qx 2 || fail "--n 2 did not print two samples"
"$PYTHON" -c "
import sys; t = open('two.txt', 'rb').read().split(b'--- sample ')
sys.exit(t[1][2:] == t[2][2:])" || fail "--n 2 printed the same sample twice"
"$STRATA" sample --checkpoint ckpt/ckpt-200.h5 --prompt "The " --tokens 32 --n 2 > two_again.txt
cmp -s two.txt two_again.txt || fail "the same seed gave other text"

# Bad input: one line, exit 2.
echo "not a checkpoint" > bad.h5
expect_exit 2 "bad.h5" "$STRATA" sample --checkpoint bad.h5
expect_exit 2 "missing.h5" "$STRATA" sample --checkpoint missing.h5
head -c 200 /usr/share/common-licenses/GPL-3 > long.txt
expect_exit 2 "context \(block_size 128\)" "$STRATA" sample --checkpoint ckpt/ckpt-200.h5 \
  --prompt-file long.txt
expect_exit 2 "context \(block_size 128\)" "$STRATA" sample --checkpoint ckpt/ckpt-200.h5 \
  --prompt "$prompt" --tokens 100
expect_exit 2 "--temperature -0.5: must be >= 0" "$STRATA" sample --checkpoint ckpt/ckpt-200.h5 \
  --temperature -0.5
expect_exit 2 "--top-p 0: must be in" "$STRATA" sample --checkpoint ckpt/ckpt-200.h5 --top-p 0
expect_exit 2 "--tokens 'x'" "$STRATA" sample --checkpoint ckpt/ckpt-200.h5 --tokens x
expect_exit 2 "exclude each other" "$STRATA" sample --checkpoint ckpt/ckpt-200.h5 --prompt a \
  --prompt-file long.txt
"$STRATA" import --from hf "$STRATA_SOURCE_DIR/tests/fixtures/sample/gpt2_tiny" --out g.h5 > /dev/null
expect_exit 2 "g.h5: no tokenizer recorded for this model \(vocab_size 67\)" \
  "$STRATA" sample --checkpoint g.h5
expect_exit 2 "tokenizer byte has 256 tokens, the model only 67" \
  "$STRATA" sample --checkpoint g.h5 --tokenizer byte
expect_exit 2 "log.sample_every: -1 is out of range" "$STRATA" train \
  --config "$STRATA_SOURCE_DIR/configs/tiny.ini" --set log.sample_every=-1
expect_exit 2 "\[log\] sample_every: the model's vocab_size is 300, not the byte tokenizer's 256" \
  "$STRATA" train --config "$STRATA_SOURCE_DIR/configs/tiny.ini" --set data.new="$PWD/english.h5" \
  --set eval.val.path="$PWD/english.val.h5" --set eval.val.max_samples=2 \
  --set model.vocab_size=300 --set log.sample_every=5 --set checkpoint.dir="$PWD/v300" \
  --set checkpoint.resume=never
echo "test_sample: all checks passed"
