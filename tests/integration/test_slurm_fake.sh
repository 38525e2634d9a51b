#!/usr/bin/env bash
# The Slurm side of campaigns, under a real single-node Slurm, with a stand-in
# trainer (tests/slurm/fake_strata.sh) that keeps the strata train contract:
#   A. a job whose time limit ends before its campaign gets --signal'd by
#      Slurm, checkpoints, requeues itself (SLURM_RESTART_COUNT rises) and
#      finishes the campaign; every step runs exactly once;
#   B. campaign.sh with 3 chained jobs, requeue refused (--no-requeue), two of
#      them preempted (scancel --batch --signal=USR1, what Slurm does with
#      PreemptParameters=send_user_signal): the chain finishes the campaign;
#   C. campaign.sh with 3 chained jobs, requeue allowed, the first job's step
#      sent SIGTERM (scancel --signal=TERM): the job requeues, finishes, and
#      the chained jobs start only after it and end at once;
#   D. campaign.sh on a finished campaign exits 0 and submits nothing.
# Needs root (or slurm-wlm and munge installed); takes about 2.5 minutes.
# Environment (from ctest): STRATA_SOURCE_DIR, STRATA_WORK. STRATA (the real
# binary) is not used here; see test_slurm_campaign.sh.
set -euo pipefail

SRC=${STRATA_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
WORK=${STRATA_WORK:-$(mktemp -d /tmp/strata-test-slurm-fake.XXXXXX)}
rm -rf "$WORK"; mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

if [[ $(id -u) != 0 ]]; then
    echo "FAIL: needs root (the test cluster runs its daemons as root, SlurmUser=root)" >&2
    exit 1
fi

# a short state directory: unix socket paths live under it
export STRATA_SLURM_DIR
STRATA_SLURM_DIR=$(mktemp -d /tmp/strata-slurm-t.XXXXXX)
export SLURM_CONF=$STRATA_SLURM_DIR/etc/slurm.conf
CLUSTER=$SRC/tests/slurm/cluster.sh
export STRATA=$SRC/tests/slurm/fake_strata.sh
export FAKE_STRATA_STEP_SECONDS=0.2
T0=$SECONDS

fail() {
    echo "FAIL: $*" >&2
    for f in "$WORK"/*.out; do [[ -e $f ]] && { echo "---- $f" >&2; cat "$f" >&2; }; done
    exit 1
}
cleanup() {
    local rc=$?
    if ((rc != 0)); then
        squeue -o '%i %T %r %E' >&2 2>/dev/null || true
        for f in "$STRATA_SLURM_DIR"/log/*; do [[ -s $f ]] && { echo "---- $f" >&2; tail -n 20 "$f" >&2; }; done
    fi
    "$CLUSTER" down || true
    rm -rf "$STRATA_SLURM_DIR"
    echo "test_slurm_fake: $((SECONDS - T0)) s, exit $rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

job_state() { scontrol -o show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
job_field() { scontrol -o show job "$1" 2>/dev/null | grep -o " $2=[^ ]*" | cut -d= -f2; }
is_final() { [[ $1 =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|BOOT_FAIL|DEADLINE|OUT_OF_MEMORY|PREEMPTED)$ ]]; }

wait_final() {   # JOBID TIMEOUT_S -> prints the final state
    local j=$1 limit=$2 t0=$SECONDS s
    while :; do
        s=$(job_state "$j")
        # a requeue passes through COMPLETING/REQUEUED to PENDING: final only if it stays
        if is_final "$s"; then
            sleep 1
            [[ $(job_state "$j") == "$s" ]] && { echo "$s"; return 0; }
        fi
        ((SECONDS - t0 < limit)) || fail "job $j not finished after ${limit}s (state ${s:-gone})"
        sleep 1
    done
}
wait_running() {   # JOBID TIMEOUT_S
    local t0=$SECONDS
    until [[ $(job_state "$1") == RUNNING ]]; do
        ((SECONDS - t0 < $2)) || fail "job $1 not running after ${2}s"
        sleep 0.5
    done
}
wait_steps() {   # DIR N TIMEOUT_S: until the fake has done at least N steps
    local t0=$SECONDS
    until [[ -r $1/steps.log ]] && (($(wc -l < "$1/steps.log") >= $2)); do
        ((SECONDS - t0 < $3)) || fail "$1: fewer than $2 steps after ${3}s"
        sleep 0.2
    done
}
check_steps() {   # DIR N: every step 1..N ran exactly once, DONE holds N
    local dir=$1 n=$2 got
    [[ -r $dir/steps.log ]] || fail "$dir/steps.log missing"
    got=$(awk '{print $1}' "$dir/steps.log" | sort -n | uniq -c | awk -v n="$n" '
        $1 != 1 { bad = bad " step " $2 " ran " $1 " times;" } { seen++ }
        END { if (seen != n) bad = bad " " seen " distinct steps, expected " n; print bad }')
    [[ -z $got ]] || fail "$dir:$got"
    [[ $(awk 'NR == 1 {print $1}' "$dir/steps.log") == 1 ]] || fail "$dir: first step is not 1"
    [[ $(cat "$dir/DONE" 2>/dev/null) == "$n $n" ]] || fail "$dir/DONE does not say '$n $n'"
}
mkconfig() {   # NAME STEPS
    printf '[train]\nsteps = %s\n\n[checkpoint]\ndir = %s-ckpt   ; relative to this file\nevery = 25\n' \
        "$2" "$1" > "$WORK/$1.ini"
}

# ---------------------------------------------------------------- usage errors (no Slurm needed)
mkconfig usage 10
set +e
"$SRC/slurm/campaign.sh" >/dev/null 2>&1; [[ $? == 2 ]] || fail "campaign.sh without arguments: want exit 2"
"$SRC/slurm/campaign.sh" "$WORK/nope.ini" 3 >/dev/null 2>&1; [[ $? == 2 ]] || fail "campaign.sh with a missing config: want exit 2"
"$SRC/slurm/campaign.sh" "$WORK/usage.ini" x >/dev/null 2>&1; [[ $? == 2 ]] || fail "campaign.sh with N_JOBS=x: want exit 2"
set -e

# ---------------------------------------------------------------- campaign.sh against a stub sbatch
mkdir -p "$WORK/stub"
cat > "$WORK/stub/sbatch" <<'EOF'
#!/bin/bash
n=$(( $(wc -l < "$STUB_LOG" 2>/dev/null || echo 0) + 101 ))
printf '%s\n' "$*" >> "$STUB_LOG"
echo "$n"
EOF
chmod +x "$WORK/stub/sbatch"
stub_campaign() { rm -f "$WORK/stub.log"; STUB_LOG=$WORK/stub.log PATH=$WORK/stub:$PATH "$SRC/slurm/campaign.sh" "$@"; }
stub_calls() { [[ -r $WORK/stub.log ]] && wc -l < "$WORK/stub.log" || echo 0; }
stub_campaign "$WORK/usage.ini" 3 --time=5 -- --set log.every=1 >/dev/null || fail "campaign.sh (stub) failed"
[[ $(stub_calls) == 3 ]] || fail "campaign.sh submitted $(stub_calls) jobs, want 3"
[[ $(sed -n 1p "$WORK/stub.log") == "--parsable --time=5 $SRC/slurm/strata.sbatch $WORK/usage.ini --set log.every=1" ]] ||
    fail "campaign.sh job 1: sbatch $(sed -n 1p "$WORK/stub.log")"
[[ $(sed -n 3p "$WORK/stub.log") == "--parsable --dependency=afterany:102 --time=5 "* ]] ||
    fail "campaign.sh job 3: sbatch $(sed -n 3p "$WORK/stub.log")"
mkdir -p "$WORK/usage-ckpt"
for done_line in "10 10" "10" "7 10"; do   # done; old one-number form; data ran out before steps
    echo "$done_line" > "$WORK/usage-ckpt/DONE"
    stub_campaign "$WORK/usage.ini" 3 | grep -q 'already complete' || fail "DONE '$done_line': campaign.sh did not say complete"
    [[ $(stub_calls) == 0 ]] || fail "DONE '$done_line': campaign.sh submitted jobs"
done
stub_campaign "$WORK/usage.ini" 2 -- --set train.steps=20 >/dev/null
[[ $(stub_calls) == 2 ]] || fail "DONE for 10 steps, steps raised to 20: campaign.sh submitted $(stub_calls) jobs, want 2"

"$CLUSTER" up

# ---------------------------------------------------------------- A: a real time limit
# 300 steps of 0.2 s = 60 s of work; --time=1 (the minimum, 60 s) with the
# warning signal 10 s ahead. Slurm checks limits every 30 s and may signal up
# to 60 s early, so the first run is signalled 20..50 s in: never done by then.
echo "== A: time limit, signal, checkpoint, requeue"
mkconfig a 300
ja=$(sbatch --parsable --time=1 --signal=B:USR1@10 --output="$WORK/a-%j.out" "$SRC/slurm/strata.sbatch" "$WORK/a.ini")
sa=$(wait_final "$ja" 240)
out=$WORK/a-$ja.out
[[ $sa == COMPLETED ]] || fail "A: job $ja ended $sa"
grep -q 'SLURM_RESTART_COUNT=0' "$out" || fail "A: no first run in $out"
grep -q 'SLURM_RESTART_COUNT=[1-9]' "$out" || fail "A: job never restarted (SLURM_RESTART_COUNT stayed 0)"
grep -q 'got SIGUSR1' "$out" || fail "A: the time-limit signal never reached the batch script"
grep -q 'checkpoint at step [0-9]* saved; exit 75' "$out" || fail "A: the step did not checkpoint on the signal"
grep -q 'requeued; the next run resumes' "$out" || fail "A: the job did not requeue itself"
grep -q 'campaign complete' "$out" || fail "A: no 'campaign complete'"
grep -q 'CANCELLED AT .* DUE TO TIME LIMIT' "$out" && fail "A: the job ran into its time limit"
restarts=$(job_field "$ja" Restarts)
((restarts >= 1)) || fail "A: scontrol says Restarts=$restarts"
check_steps "$WORK/a-ckpt" 300
echo "A: ok: job $ja restarted $restarts time(s), 300 steps each exactly once ($((SECONDS - T0)) s so far)"

# ---------------------------------------------------------------- B: a chain does what requeue cannot
echo "== B: campaign.sh, 3 chained jobs, requeue refused, two preemptions"
mkconfig b 60
mapfile -t ids < <("$SRC/slurm/campaign.sh" "$WORK/b.ini" 3 --no-requeue --output="$WORK/b-%j.out" |
                   sed -n 's/^campaign.sh: job [0-9]* of 3: \([0-9]*\).*/\1/p')
((${#ids[@]} == 3)) || fail "B: campaign.sh did not report 3 jobs"
[[ $(job_field "${ids[1]}" Dependency) == "afterany:${ids[0]}"* ]] || fail "B: job ${ids[1]} does not depend on ${ids[0]}"
[[ $(job_field "${ids[2]}" Dependency) == "afterany:${ids[1]}"* ]] || fail "B: job ${ids[2]} does not depend on ${ids[1]}"
wait_running "${ids[0]}" 60
wait_steps "$WORK/b-ckpt" 10 60
scancel --batch --signal=USR1 "${ids[0]}"
wait_running "${ids[1]}" 60
wait_steps "$WORK/b-ckpt" 35 60
scancel --batch --signal=USR1 "${ids[1]}"
s3=$(wait_final "${ids[2]}" 120)
for k in 0 1; do
    j=${ids[$k]}
    s=$(wait_final "$j" 10)
    [[ $s == FAILED && $(job_field "$j" ExitCode) == 75:0 ]] || fail "B: job $j: $s exit $(job_field "$j" ExitCode), want FAILED 75:0"
    grep -q 'requeue refused' "$WORK/b-$j.out" || fail "B: job $j: no 'requeue refused'"
done
[[ $s3 == COMPLETED ]] || fail "B: last job ${ids[2]} ended $s3"
grep -q 'campaign complete' "$WORK/b-${ids[2]}.out" || fail "B: no 'campaign complete' from the last job"
check_steps "$WORK/b-ckpt" 60
echo "B: ok ($((SECONDS - T0)) s so far)"

# ---------------------------------------------------------------- C: requeue inside a chain
echo "== C: campaign.sh, 3 chained jobs, SIGTERM to the step, requeue"
mkconfig c 50
mapfile -t ids < <("$SRC/slurm/campaign.sh" "$WORK/c.ini" 3 --output="$WORK/c-%j.out" |
                   sed -n 's/^campaign.sh: job [0-9]* of 3: \([0-9]*\).*/\1/p')
((${#ids[@]} == 3)) || fail "C: campaign.sh did not report 3 jobs"
wait_running "${ids[0]}" 60
wait_steps "$WORK/c-ckpt" 10 60
scancel --signal=TERM "${ids[0]}"         # the job steps only, as a preemption's SIGTERM
for j in "${ids[@]}"; do
    s=$(wait_final "$j" 120)
    [[ $s == COMPLETED ]] || fail "C: job $j ended $s"
done
out=$WORK/c-${ids[0]}.out
grep -q 'SLURM_RESTART_COUNT=1' "$out" || fail "C: job ${ids[0]} did not restart"
grep -q 'campaign complete' "$out" || fail "C: job ${ids[0]} did not complete the campaign"
for j in "${ids[1]}" "${ids[2]}"; do
    grep -q 'campaign already complete' "$WORK/c-$j.out" ||
        fail "C: job $j started before the requeued job ${ids[0]} had finished the campaign"
    grep -q 'fake_strata: rank' "$WORK/c-$j.out" && fail "C: job $j ran the trainer after the campaign was done"
done
check_steps "$WORK/c-ckpt" 50
echo "C: ok ($((SECONDS - T0)) s so far)"

# ---------------------------------------------------------------- D: nothing to do
echo "== D: campaign.sh on a finished campaign"
before=$(squeue -h -t all -o %i | wc -l)
msg=$("$SRC/slurm/campaign.sh" "$WORK/b.ini" 3 --output="$WORK/d-%j.out") || fail "D: campaign.sh exited $?"
grep -q 'already complete.*nothing submitted' <<<"$msg" || fail "D: campaign.sh said: $msg"
[[ $(squeue -h -t all -o %i | wc -l) == "$before" ]] || fail "D: campaign.sh submitted a job for a finished campaign"
# raising steps continues a finished campaign
msg=$("$SRC/slurm/campaign.sh" "$WORK/b.ini" 1 --output="$WORK/d-%j.out" -- --set train.steps=70)
jd=$(sed -n 's/^campaign.sh: job 1 of 1: \([0-9]*\).*/\1/p' <<<"$msg")
[[ -n $jd ]] || fail "D: raising train.steps did not submit a job: $msg"
[[ $(wait_final "$jd" 60) == COMPLETED ]] || fail "D: job $jd did not complete"
check_steps "$WORK/b-ckpt" 70
echo "D: ok"

echo "PASS: test_slurm_fake"
