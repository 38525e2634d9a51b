#!/usr/bin/env bash
# strata bench reports figures that agree with each other and with the
# outside world: tokens/s from the step time, FLOPs per token from the
# shapes (6N + 12LTC, N counted here independently), a breakdown that sums
# to 100%, and a peak RSS that /usr/bin/time confirms and that stays within
# 1.3x of params + grads + Adam m/v + activations. Bad arguments: exit 2.
. "$(dirname "$0")/lib.sh"

/usr/bin/time -v -o time.log "$STRATA" bench --config "$STRATA_SOURCE_DIR/configs/tiny.ini" \
  --set train.micro_batch=4 --set data.seq_len=64 --warmup 1 --steps 3 > bench.log 2> err.log \
  || fail "strata bench failed: $(cat err.log)"
cat bench.log
"$PYTHON" - bench.log time.log <<'PY' || fail "bench figures do not add up"
import re, sys
out = open(sys.argv[1]).read()
def num(pattern):
    m = re.search(pattern, out)
    if not m:
        sys.exit(f"no line matches {pattern!r}")
    return [float(x) for x in m.groups()]
L, C, NH, V, Vp, B, T = num(r"L=(\d+) C=(\d+) NH=(\d+) V=(\d+) \(padded to (\d+)\), B=(\d+) T=(\d+)")
assert (L, C, NH, V, Vp, B, T) == (4, 128, 4, 256, 256, 4, 64), (L, C, NH, V, Vp, B, T)
(ms,) = num(r"step +median ([\d.]+) ms over 3 steps")
(tps,) = num(r"throughput ([\d.]+) tokens/s")
assert abs(tps - B * T / (ms / 1e3)) <= 0.01 * tps + 1, (tps, ms)
block_size = 128  # configs/tiny.ini: wpe has block_size rows whatever T is
n_params = V * C + block_size * C + L * (12 * C * C + 13 * C) + 2 * C
(fpt,) = num(r"flops +([\d.e+]+) per token")
want = 6 * n_params + 12 * L * T * C
assert abs(fpt - want) <= 5e-3 * want, (fpt, want)  # printed to 3 digits
(peak,) = num(r"sgemm peak ([\d.]+) GFLOP/s")
assert 1 < peak < 10000, peak
paired, best = num(r"MFU +([\d.]+)% of the probe run right after each step .*; ([\d.]+)% of the fastest")
achieved = tps * fpt / 1e9
assert abs(best - 100 * achieved / peak) <= 0.2 + 0.01 * best, (best, achieved, peak)
assert 0 < best <= 100 and 0 < paired <= 100, (paired, best)
parts = num(r"matmul ([\d.]+)% \| attention ([\d.]+)% \| element-wise ([\d.]+)% \| loss ([\d.]+)% \| optimizer ([\d.]+)%")
assert abs(sum(parts) - 100) < 0.6 and parts[0] > 0, parts
state, act, expected, rss, ratio = num(
    r"params\+grads\+adam (\d+) MiB \+ activations (\d+) MiB = (\d+) MiB expected; peak RSS (\d+) MiB \(([\d.]+)x\)")
assert abs(state - (n_params + (Vp - V) * C) * 16 / 2**20) <= 1, state
time_rss = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(sys.argv[2]).read()).group(1)) / 1024
assert abs(rss - time_rss) <= 0.1 * time_rss + 16, (rss, time_rss)  # time -v also counts the exit path
print(f"bench: {tps:.0f} tok/s, {fpt:.4g} FLOPs/token, peak RSS {rss:.0f} MiB = {ratio}x expected")
# The tiny config is small next to the process's fixed cost (MPI, OpenBLAS
# buffers); the 1.3x bound is asserted on a config where the model dominates.
PY

# The small config's shapes at B=1 T=64: the model state dominates RSS.
"$STRATA" bench --config "$STRATA_SOURCE_DIR/configs/small.ini" --set train.micro_batch=1 \
  --set data.seq_len=64 --warmup 0 --steps 1 > small.log 2> err.log || fail "$(cat err.log)"
ratio=$(sed -n 's/.*peak RSS [0-9]* MiB (\([0-9.]*\)x).*/\1/p' small.log)
echo "small config, B=1 T=64: peak RSS ${ratio}x of params + grads + Adam m/v + activations"
"$PYTHON" -c "import sys; sys.exit(not (0.5 < $ratio <= 1.3))" || fail "peak RSS ${ratio}x is not within 1.3x"

expect_exit 2 "bench: unexpected argument '--steps'" "$STRATA" bench --steps 0
expect_exit 2 "bench: unexpected argument '--threads'" "$STRATA" bench --threads 2
expect_exit 2 "missing.ini" "$STRATA" bench --config missing.ini
expect_exit 2 "missing --config" "$STRATA" bench --set train.micro_batch=4
expect_exit 2 "micro_batch" "$STRATA" bench --config "$STRATA_SOURCE_DIR/configs/tiny.ini" \
  --set train.micro_batch=0
echo "PASS"
