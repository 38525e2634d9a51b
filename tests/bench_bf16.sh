#!/usr/bin/env bash
# bf16 against fp32 (issue 13), two parts, same sitting:
#   tests/bench_bf16.sh loss [STEPS]   held-out loss after STEPS (500) steps on real
#                                      text (Debian's license and copyright files,
#                                      byte-level), tiny GPT-2 and a small llama,
#                                      fp32 and bf16; prints the ratio
#   tests/bench_bf16.sh speed          strata bench, small GPT-2 and the SmolLM2-135M
#                                      shape, fp32 and bf16, 1 and 2 threads, with
#                                      peak RSS; then the PyTorch peers if present
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
strata=${STRATA:-$root/build/strata}
what=${1:-loss}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ "$what" = loss ]; then
  steps=${2:-500}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  files=$(for f in /usr/share/common-licenses/* $(ls /usr/share/doc/*/copyright | sort); do
    [ -f "$f" ] && echo "$f"; done | head -n 1500)
  "$strata" pack --tokenizer byte --val-fraction 0.05 --out "$work/text" $files >/dev/null
  # tiny (configs/tiny.ini's shape); the llama one of the same size with GQA,
  # SwiGLU of 344 and an untied head
  for model in gpt2 llama; do
    for prec in fp32 bf16; do
      cat >"$work/$model-$prec.ini" <<EOF
[model]
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
vocab_size = 256
$([ $model = llama ] && printf 'family = llama\nn_kv_head = 2\nffn_dim = 344\ntied = false\n')
[data]
new = text.h5
seq_len = 128
seed = 1234
[train]
steps = $steps
global_batch = 8
micro_batch = 8
lr = 3e-3
min_lr = 3e-4
warmup = 25
precision = $prec
[checkpoint]
dir = ck-$model-$prec
every = 0
resume = never
[log]
metrics = $model-$prec.jsonl
every = 100
eval_every = $steps
[eval.held_out]
path = text.val.h5
max_samples = 256
EOF
      "$strata" train --config "$work/$model-$prec.ini" >"$work/$model-$prec.log" 2>&1 ||
        { cat "$work/$model-$prec.log"; exit 1; }
    done
    /usr/bin/python3 - "$work/$model-fp32.jsonl" "$work/$model-bf16.jsonl" "$model" "$steps" <<'EOF'
import json, sys
def held_out(f):
    ev = [json.loads(l) for l in open(f) if '"eval"' in l]
    return ev[-1]["loss"]
a, b = held_out(sys.argv[1]), held_out(sys.argv[2])
print(f"{sys.argv[3]:5s} {sys.argv[4]} steps: held-out loss fp32 {a:.4f}, bf16 {b:.4f}, "
      f"bf16/fp32 {b / a:.4f} ({100 * (b - a) / a:+.2f} %)")
EOF
  done
  exit 0
fi

grep -m1 'model name' /proc/cpuinfo
grep -o 'amx_bf16\|avx512_bf16' /proc/cpuinfo | sort -u || echo "no amx_bf16, no avx512_bf16"
peers=${PEERS:-$root/../shared/bench}
for cfg in small smollm2; do
  if [ $cfg = small ]; then
    args=(--config configs/small.ini)
  else
    args=(--config configs/smollm2-135m.ini --set train.micro_batch=1 --set data.seq_len=512)
  fi
  for th in 1 2; do
    for prec in fp32 bf16; do
      echo "== strata $cfg, $th thread(s), $prec"
      OMP_NUM_THREADS=$th /usr/bin/time -f "max RSS %M KiB" "$strata" bench "${args[@]}" \
        --set train.precision=$prec --steps 3 --warmup 1 2>&1 |
        grep -E 'machine|throughput|MFU|breakdown|memory|peak|RSS'
      [ -d "$peers" ] || continue
      bf=$([ $prec = bf16 ] && echo --bf16 || true)
      echo "== torch $cfg, $th thread(s), $prec"
      if [ $cfg = small ]; then
        /usr/bin/python3 "$peers/torch_gpt2.py" --config small --threads $th --steps 3 --warmup 1 $bf 2>&1 | tail -3
      else
        /usr/bin/python3 "$peers/torch_llama.py" bench --preset smollm2-135m --threads $th --batch 1 \
          --seq 512 --steps 3 $bf 2>&1 | tail -3
      fi
    done
  done
done
