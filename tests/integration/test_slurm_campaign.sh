#!/usr/bin/env bash
# Campaigns under a real single-node Slurm with the real strata (2 ranks):
#   A. a job whose time limit ends before its campaign is signalled by Slurm,
#      checkpoints, requeues itself (SLURM_RESTART_COUNT rises) and finishes;
#   B. campaign.sh with 3 chained jobs (requeue refused), preempted twice,
#      finishes the campaign;
#   C. campaign.sh on the finished campaign submits nothing;
# and A's and B's final model and optimizer tensors equal an uninterrupted
# mpirun run's, byte for byte. About 4-5 minutes.
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || fail "needs root: the test cluster runs its daemons as root"
cmp_ckpt() { "$PYTHON" "$STRATA_SOURCE_DIR/tests/integration/compare_ckpt.py" "$@"; }
CLUSTER=$STRATA_SOURCE_DIR/tests/slurm/cluster.sh
TEMPLATE=$STRATA_SOURCE_DIR/slurm/strata.sbatch
CAMPAIGN=$STRATA_SOURCE_DIR/slurm/campaign.sh
T0=$SECONDS

"$STRATA" pack --tokenizer byte --out english $(english_files 600000) >/dev/null
# schedule = constant: the state after step k does not depend on [train] steps,
# so the reference's checkpoint at step NB is also the end of an NB-step run
cat > run.ini <<'EOF2'
[model]
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
vocab_size = 256
[data]
new = english.h5
wrap = true
seq_len = 64
seed = 11
[train]
steps = 40
global_batch = 8
micro_batch = 4
lr = 1e-3
warmup = 5
schedule = constant
[checkpoint]
dir = calib
every = 10
keep = 1000
[log]
metrics = calib.jsonl
every = 1
EOF2

# ---- a private Slurm
export STRATA_SLURM_DIR
STRATA_SLURM_DIR=$(mktemp -d /tmp/strata-slurm-c.XXXXXX)   # short: unix sockets live there
export SLURM_CONF=$STRATA_SLURM_DIR/etc/slurm.conf
trap '"$CLUSTER" down || true; rm -rf "$STRATA_SLURM_DIR"' EXIT
"$CLUSTER" up

job_field() { scontrol -o show job "$1" 2>/dev/null | grep -o " $2=[^ ]*" | cut -d= -f2; }
wait_final() { # JOB LIMIT_S -> its final state (a requeue passes through non-final states)
  local t0=$SECONDS s
  while :; do
    s=$(job_field "$1" JobState)
    case $s in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE)
      sleep 1; [ "$(job_field "$1" JobState)" = "$s" ] && { echo "$s"; return; } ;; esac
    [ $((SECONDS - t0)) -lt "$2" ] || { echo "STILL-$s"; return; }
    sleep 1
  done
}
latest_step() { # DIR -> the step of its latest checkpoint, 0 if none
  local l
  l=$(cat "$1/latest" 2>/dev/null) || { echo 0; return; }
  l=${l##*ckpt-}; echo "${l%.h5}"
}
wait_step() { # DIR STEP LIMIT_S
  local t0=$SECONDS
  until [ "$(latest_step "$1")" -ge "$2" ]; do
    [ $((SECONDS - t0)) -lt "$3" ] || fail "$1: no checkpoint at step >= $2 after $3 s"
    sleep 0.5
  done
}

# ---- calibrate under srun: A's first run must outlast the time-limit signal,
# which comes 20..50 s into a 1-minute job; give it ~90 s of steps
srun --ntasks=2 --mpi=pmix "$STRATA" train --config run.ini --set checkpoint.resume=never > calib.log 2>&1 ||
  fail "calibration run: $(tail -3 calib.log)"
ms=$("$PYTHON" -c "
import json, statistics
print(statistics.median(r['ms'] for r in map(json.loads, open('calib.jsonl')) if 'ms' in r and r['step'] > 10))")
N=$("$PYTHON" -c "import math; print(max(100, min(5000, math.ceil(90000 / max($ms, 1)))))")
NB=$(( (N / 3 + 9) / 10 * 10 ))
echo "step ~${ms} ms: campaign A of $N steps, B of $NB steps ($((SECONDS - T0)) s so far)"

# ---- the reference: one uninterrupted mpirun run
"${MPIRUN[@]}" -np 2 "$STRATA" train --config run.ini --set checkpoint.resume=never --set train.steps="$N" \
  --set checkpoint.dir=ref --set checkpoint.every="$NB" --set log.metrics=ref.jsonl > ref.log 2>&1 ||
  fail "reference run: $(tail -3 ref.log)"
[ -f "ref/ckpt-$N.h5" ] && [ -f "ref/ckpt-$NB.h5" ] || fail "reference checkpoints missing: $(ls ref)"
echo "reference done ($((SECONDS - T0)) s so far)"

# ---- A: a real time limit: --time=1 (Slurm's minimum), USR1 10 s ahead (it comes 10..40 s ahead)
ja=$(sbatch --parsable --ntasks=2 --time=1 --signal=B:USR1@10 --output="$PWD/a-%j.out" \
  "$TEMPLATE" run.ini --set train.steps="$N" --set checkpoint.dir=a --set checkpoint.every=0 \
  --set log.metrics=a.jsonl)
t0=$SECONDS
until [ "$(job_field "$ja" Restarts)" -ge 1 ] 2>/dev/null; do
  [ "$(job_field "$ja" JobState)" != COMPLETED ] ||
    fail "A: job $ja finished before its time-limit signal (steps faster than calibrated?)"
  [ $((SECONDS - t0)) -lt 200 ] || fail "A: job $ja not requeued after 200 s: $(cat "a-$ja.out")"
  sleep 1
done
# requeued: let the next run finish the campaign instead of being cut again
scontrol update JobId="$ja" TimeLimit=30
sa=$(wait_final "$ja" 600)
[ "$sa" = COMPLETED ] || fail "A: job $ja ended $sa: $(cat "a-$ja.out")"
grep -q 'SLURM_RESTART_COUNT=1' "a-$ja.out" || fail "A: no restarted run in the output"
grep -q 'got SIGUSR1' "a-$ja.out" || fail "A: the time-limit signal never reached the batch script"
grep -q 'requeued; the next run resumes' "a-$ja.out" || fail "A: the job did not requeue itself"
grep -q 'campaign complete' "a-$ja.out" || fail "A: no 'campaign complete'"
grep -q 'DUE TO TIME LIMIT' "a-$ja.out" && fail "A: the job ran into its time limit"
[ -f a/DONE ] || fail "A: no a/DONE"
echo -n "A vs the reference: "
cmp_ckpt "a/ckpt-$N.h5" "ref/ckpt-$N.h5" --bitwise || fail "A: the requeued campaign differs from the uninterrupted run"
echo "A ok ($((SECONDS - T0)) s so far)"

# ---- B: campaign.sh, 3 chained jobs, requeue refused, preempted at ~1/4 and ~1/2
# (scancel --batch --signal=USR1 is what Slurm sends with PreemptParameters=send_user_signal)
mapfile -t ids < <("$CAMPAIGN" run.ini 3 --ntasks=2 --no-requeue --output="$PWD/b-%j.out" -- \
  --set train.steps="$NB" --set checkpoint.dir=b --set checkpoint.every=10 --set log.metrics=b.jsonl |
  sed -n 's/^campaign.sh: job [0-9]* of 3: \([0-9]*\).*/\1/p')
[ "${#ids[@]}" = 3 ] || fail "B: campaign.sh did not submit 3 jobs"
wait_step b $((NB / 4)) 300
scancel --batch --signal=USR1 "${ids[0]}"
wait_step b $((NB / 2)) 300
[ "$(job_field "${ids[1]}" JobState)" = RUNNING ] || fail "B: job ${ids[1]} is not the one running"
scancel --batch --signal=USR1 "${ids[1]}"
[ "$(wait_final "${ids[2]}" 400)" = COMPLETED ] || fail "B: the last job did not complete: $(cat b-*.out)"
for j in "${ids[0]}" "${ids[1]}"; do
  [ "$(job_field "$j" ExitCode)" = 75:0 ] || fail "B: job $j ended with $(job_field "$j" ExitCode), want 75:0"
done
echo -n "B vs the reference: "
cmp_ckpt "b/ckpt-$NB.h5" "ref/ckpt-$NB.h5" --bitwise || fail "B: the chained campaign differs from the uninterrupted run"

# ---- C: done means done
before=$(squeue -h -t all -o %i | wc -l)
"$CAMPAIGN" run.ini 3 -- --set train.steps="$NB" --set checkpoint.dir=b | grep -q 'already complete' ||
  fail "C: campaign.sh did not see the campaign complete"
[ "$(squeue -h -t all -o %i | wc -l)" = "$before" ] || fail "C: campaign.sh submitted jobs for a finished campaign"
echo "PASS ($((SECONDS - T0)) s)"
