#!/usr/bin/env bash
# strata against the PyTorch reference of ../shared/bench, side by side in
# one sitting: tokens/s at 1 and 2 threads on a config (default small).
# Both programs time the same number of steps after the same warm-up (the
# reference's defaults), take the median, and alternate which goes first
# from round to round, so a noisy spell on this shared machine lands on
# both. The last lines give the median ratio over the rounds.
#   tests/bench_vs_torch.sh [config] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-small}
rounds=${2:-3}
torch_script=${TORCH_BENCH:-../shared/bench/torch_gpt2.py}
strata=${STRATA:-build/strata}
# The bench shapes of ../shared/bench/README.md (B = micro_batch per rank),
# with torch_gpt2.py's warm-up and timed steps.
case $config in
  tiny) shape=(--config configs/tiny.ini --set train.micro_batch=8) steps=(--warmup 5 --steps 30) ;;
  small) shape=(--config configs/small.ini --set train.micro_batch=8) steps=(--warmup 2 --steps 10) ;;
  gpt2) shape=(--config configs/gpt2-124M.ini --set train.micro_batch=1) steps=(--warmup 1 --steps 4) ;;
  *) echo "usage: $0 tiny|small|gpt2 [rounds]" >&2; exit 2 ;;
esac
run_strata() {
  s=$(OMP_NUM_THREADS=$1 "$strata" bench "${shape[@]}" "${steps[@]}" 2>&1)
  s_tps=$(echo "$s" | awk '/^throughput/ {print $2}')
  # MFU against the sgemm probe run after each step, then against the run's fastest probe.
  s_mfu=$(echo "$s" | awk '/^MFU/ {print $2}')
  s_mfu_best=$(echo "$s" | awk '/^MFU/ {for (i = 3; i <= NF; i++) if ($i ~ /%$/) v = $i; print v}')
}
run_torch() {
  t=$(/usr/bin/python3 "$torch_script" --config "$config" --threads "$1" 2>&1 | tail -1)
  t_tps=$(echo "$t" | tr ' ' '\n' | sed -n 's/^tokens_per_s=//p; s/^tok_per_s=//p; s/^tokps=//p' | head -1)
}
results=$(mktemp)
printf '%-8s %-6s %-7s %12s %12s %8s %10s %10s\n' threads round first strata_tok/s torch_tok/s ratio MFU_paired MFU_best
for threads in 1 2; do
  for round in $(seq 1 "$rounds"); do
    if [ $((round % 2)) -eq 1 ]; then
      first=strata
      run_strata "$threads"
      run_torch "$threads"
    else
      first=torch
      run_torch "$threads"
      run_strata "$threads"
    fi
    ratio=$(echo "scale=3; $s_tps / $t_tps" | bc)
    echo "$threads $ratio $s_mfu $s_mfu_best" >> "$results"
    printf '%-8s %-6s %-7s %12s %12s %8.2f %10s %10s\n' "$threads" "$round" "$first" "$s_tps" "$t_tps" "$ratio" \
      "$s_mfu" "$s_mfu_best"
  done
done
/usr/bin/python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for th in ("1", "2"):
    r = sorted(float(x[1]) for x in rows if x[0] == th)
    m = [float(x[2].rstrip("%")) for x in rows if x[0] == th]
    mb = [float(x[3].rstrip("%")) for x in rows if x[0] == th]
    print(f"{th} thread{'s' if th != '1' else ''}: median ratio {statistics.median(r):.2f} "
          f"(range {r[0]:.2f}-{r[-1]:.2f}), strata MFU median {statistics.median(m):.1f}% "
          f"against the probe after each step, {statistics.median(mb):.1f}% against the fastest probe, "
          f"{len(r)} rounds")
PY
rm -f "$results"
