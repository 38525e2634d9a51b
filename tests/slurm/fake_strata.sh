#!/usr/bin/env bash
# A stand-in for `strata train` that keeps the contracts slurm/ relies on, so
# the Slurm template and campaign chaining can be tested without the real
# trainer:
#
#   fake_strata.sh train --config CONFIG.ini [--set section.key=value]...
#
# - reads [train] steps, [checkpoint] dir (relative to the config file),
#   [checkpoint] every and [checkpoint] resume from the INI; --set overrides
#   them (a relative dir there is relative to the current directory);
# - "trains" one step per $FAKE_STRATA_STEP_SECONDS (default 0.2 s), resuming
#   from the step saved in DIR/fake-state (its "checkpoint") when resume = auto;
# - appends every step it completes to DIR/steps.log ("STEP JOB RESTART") so a
#   test can check that every step ran exactly once; a step run after the last
#   checkpoint and lost to SIGKILL shows up there twice;
# - checkpoints every `every` steps, on completion, and when SIGUSR1, SIGTERM
#   or SIGINT arrives (after finishing the step under way), then exits 75;
# - on completion writes DIR/DONE ("FINAL_STEP TARGET_STEPS", see
#   slurm/campaign.sh) and exits 0; started with nothing left to do, writes
#   DONE and exits 0 at once;
# - bad usage or config: exit 2. Only rank 0 ($SLURM_PROCID, $PMIX_RANK or
#   $OMPI_COMM_WORLD_RANK) writes files; other ranks keep step with it.
# FAKE_STRATA_SAVE_SECONDS (default 0) makes each checkpoint write take time.
set -uo pipefail

die() { echo "fake_strata: $*" >&2; exit 2; }

ini_get() {   # FILE SECTION KEY -> value (last one wins); status 1 if absent
    awk -v want_s="$2" -v want_k="$3" '
        function trim(x) { sub(/^[ \t\r]+/, "", x); sub(/[ \t\r]+$/, "", x); return x }
        { line = $0 }
        line ~ /^[ \t]*[;#]/ { next }
        line ~ /^[ \t]*\[/ { s = line; sub(/^[ \t]*\[/, "", s); sub(/\].*$/, "", s); sec = trim(s); next }
        sec == want_s {
            i = match(line, /[=:]/); if (i == 0) next
            if (trim(substr(line, 1, i - 1)) != want_k) next
            v = substr(line, i + 1); sub(/[ \t];.*$/, "", v); val = trim(v); found = 1
        }
        END { if (found) print val; exit !found }' "$1"
}

[[ ${1:-} == train ]] || die "usage: fake_strata.sh train --config FILE.ini [--set section.key=value]..."
shift
config='' ; declare -A set=()
while (($#)); do
    case $1 in
        --config) config=${2:-}; shift 2 || die "--config needs a file" ;;
        --config=*) config=${1#--config=}; shift ;;
        --set) [[ ${2:-} == *.*=* ]] || die "--set needs section.key=value"; set[${2%%=*}]=${2#*=}; shift 2 ;;
        --set=*) v=${1#--set=}; [[ $v == *.*=* ]] || die "--set needs section.key=value"; set[${v%%=*}]=${v#*=}; shift ;;
        *) die "unknown argument '$1'" ;;
    esac
done
[[ -n $config && -r $config ]] || die "cannot read config '${config}'"
cfgdir=$(cd "$(dirname "$config")" && pwd)

get() {   # SECTION KEY DEFAULT
    if [[ -n ${set[$1.$2]+x} ]]; then echo "${set[$1.$2]}"; return; fi
    ini_get "$config" "$1" "$2" || echo "$3"
}
steps=$(get train steps "") ; [[ $steps =~ ^[0-9]+$ ]] || die "$config: [train] steps missing or not a number"
dir=$(get checkpoint dir "") ; [[ -n $dir ]] || die "$config: [checkpoint] dir missing"
# INI paths are relative to the config file, --set paths to the current directory
if [[ -n ${set[checkpoint.dir]+x} ]]; then cfgdir=$PWD; fi
every=$(get checkpoint every 50) ; [[ $every =~ ^[1-9][0-9]*$ ]] || die "$config: [checkpoint] every must be > 0"
resume=$(get checkpoint resume auto)
[[ $dir == /* ]] || dir=$cfgdir/$dir
step_s=${FAKE_STRATA_STEP_SECONDS:-0.2}
save_s=${FAKE_STRATA_SAVE_SECONDS:-0}

rank=${SLURM_PROCID:-${PMIX_RANK:-${OMPI_COMM_WORLD_RANK:-0}}}
world=${SLURM_NTASKS:-${OMPI_COMM_WORLD_SIZE:-1}}
job=${SLURM_JOB_ID:-none}
restart=${SLURM_RESTART_COUNT:-0}

stop=
trap 'stop=${stop:-$(date +%T.%N | cut -c1-12)}' USR1 TERM INT

mkdir -p "$dir" || die "cannot create $dir"
start=0
case $resume in
    auto) [[ -r $dir/fake-state ]] && start=$(<"$dir/fake-state") ;;
    never) start=0 ;;
    *) [[ -r $resume ]] || die "resume: no checkpoint '$resume'"; start=$(<"$resume") ;;
esac
[[ $start =~ ^[0-9]+$ ]] || die "$dir/fake-state: bad content"

atomic_write() {   # FILE CONTENT
    printf '%s\n' "$2" > "$1.tmp.$$" && sync "$1.tmp.$$" 2>/dev/null; mv -f "$1.tmp.$$" "$1"
}
save() {   # STEP
    ((rank == 0)) || return 0
    [[ $save_s == 0 ]] || sleep "$save_s"
    atomic_write "$dir/fake-state" "$1"
}

echo "fake_strata: rank $rank/$world job $job restart $restart: resuming at step $start of $steps in $dir"
s=$start
while ((s < steps)); do
    if [[ -n $stop ]]; then
        save "$s"
        echo "fake_strata: rank $rank: signal at $stop; checkpoint at step $s saved; exit 75"
        exit 75
    fi
    sleep "$step_s" &
    while ! wait $!; do kill -0 $! 2>/dev/null || break; done   # a trap interrupts wait; finish the step
    s=$((s + 1))
    ((rank == 0)) && echo "$s $job $restart" >> "$dir/steps.log"
    ((s % every == 0 && s < steps)) && save "$s"
    ((rank == 0 && s % 25 == 0)) && echo "fake_strata: step $s"
done
save "$s"
((rank == 0)) && atomic_write "$dir/DONE" "$s $steps"
echo "fake_strata: rank $rank: campaign complete at step $s"
exit 0
