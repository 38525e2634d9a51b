#!/usr/bin/env bash
# strata against the PyTorch reference of ../shared/bench, side by side in
# one sitting: tokens/s at 1 and 2 threads on a config (default small),
# alternating the two programs so both see the same machine.
#   tests/bench_vs_torch.sh [config] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-small}
rounds=${2:-2}
torch_script=${TORCH_BENCH:-../shared/bench/torch_gpt2.py}
strata=${STRATA:-build/strata}
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}
# The bench shapes of ../shared/bench/README.md (B = micro_batch per rank).
case $config in
  tiny) shape=(--config configs/tiny.ini --set train.micro_batch=8) ;;
  small) shape=(--config configs/small.ini --set train.micro_batch=8) ;;
  gpt2) shape=(--config configs/gpt2-124M.ini --set train.micro_batch=1) ;;
  *) echo "usage: $0 tiny|small|gpt2 [rounds]" >&2; exit 2 ;;
esac
printf '%-8s %-8s %12s %12s %8s %10s\n' threads round strata_tok/s torch_tok/s ratio strata_MFU
for threads in 1 2; do
  for round in $(seq 1 "$rounds"); do
    s=$(OMP_NUM_THREADS=$threads "$strata" bench "${shape[@]}" --steps 5 --warmup 1 2>&1)
    s_tps=$(echo "$s" | awk '/^throughput/ {print $2}')
    s_mfu=$(echo "$s" | awk '/^MFU/ {print $2}')
    t=$(/usr/bin/python3 "$torch_script" --config "$config" --threads "$threads" 2>&1 | tail -1)
    t_tps=$(echo "$t" | tr ' ' '\n' | sed -n 's/^tokens_per_s=//p; s/^tok_per_s=//p; s/^tokps=//p' | head -1)
    ratio=$(echo "scale=2; $s_tps / $t_tps" | bc 2>/dev/null || echo "?")
    printf '%-8s %-8s %12s %12s %8s %10s\n' "$threads" "$round" "$s_tps" "$t_tps" "$ratio" "$s_mfu"
  done
done
