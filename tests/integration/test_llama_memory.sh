#!/usr/bin/env bash
# Memory of a SmolLM2-135M-shaped model (configs/smollm2-135m.ini) at T=512
# and T=2048, one training step each through `strata bench`: attention keeps
# no T x T probabilities and the lm head no B x T x V logits, so
#  - the activations per token at T=2048 are within 1.3x of those at T=512
#    (no T^2 term), both as the model reports them and as peak RSS above the
#    params + grads + Adam state;
#  - peak RSS is within 1.3x of params + grads + Adam + reported activations.
. "$(dirname "$0")/lib.sh"
# One step of 2.5 TFLOP at T=2048: both cores.
export OMP_NUM_THREADS=2

for T in 512 2048; do
  "$STRATA" bench --config "$STRATA_SOURCE_DIR/configs/smollm2-135m.ini" --set data.seq_len=$T \
    --steps 1 --warmup 0 > "bench-$T.txt" 2>&1 || fail "bench at T=$T: $(tail -3 "bench-$T.txt")"
  cat "bench-$T.txt"
done

# memory     params+grads+adam S MiB + activations A MiB = E MiB expected; peak RSS R MiB (X.XXx)
field() { sed -n "s/^memory .*params+grads+adam \([0-9]*\) MiB + activations \([0-9]*\) MiB = \([0-9]*\) MiB expected; peak RSS \([0-9]*\) MiB.*/\\$2/p" "bench-$1.txt"; }
for T in 512 2048; do
  [ -n "$(field $T 4)" ] || fail "no memory line at T=$T"
done
"$PYTHON" - "$(field 512 1)" "$(field 512 2)" "$(field 512 4)" "$(field 2048 1)" "$(field 2048 2)" "$(field 2048 4)" <<'PY' || fail "memory bounds"
import sys
s1, a1, r1, s2, a2, r2 = map(float, sys.argv[1:])
ok = True
for T, s, a, r in ((512, s1, a1, r1), (2048, s2, a2, r2)):
    ratio = r / (s + a)
    print(f"T={T}: state {s:.0f} MiB, activations {a:.0f} MiB ({a / T * 1024:.1f} KiB/token), "
          f"peak RSS {r:.0f} MiB = {ratio:.2f}x state + activations")
    ok &= ratio <= 1.3
act = (a2 / 2048) / (a1 / 512)
rss = ((r2 - s2) / 2048) / ((r1 - s1) / 512)
print(f"per token, T=2048 over T=512: reported activations {act:.2f}x, RSS above the state {rss:.2f}x")
ok &= act <= 1.3 and rss <= 1.3
sys.exit(0 if ok else 1)
PY
