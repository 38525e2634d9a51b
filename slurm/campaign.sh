#!/usr/bin/env bash
# Submit a strata campaign as a chain of Slurm jobs.
#
#   slurm/campaign.sh CONFIG.ini N_JOBS [sbatch options...] [-- strata train args...]
#
# e.g.  STRATA=$PWD/build/strata slurm/campaign.sh configs/cpt.ini 5 --ntasks=8 --time=12:00:00
#
# Submits N_JOBS jobs of slurm/strata.sbatch (or $STRATA_SBATCH), each one
# depending on the previous with --dependency=afterany:<previous id>, so job
# k+1 starts when job k has ended for whatever reason, and resumes from the
# newest checkpoint (strata.sbatch runs strata with resume=auto). A job that
# is stopped by its time limit or a preemption requeues itself; the chain is
# there for what a requeue cannot cover (a job that failed, requeue refused or
# disabled, a maintenance window). Jobs that start after the campaign is
# complete end at once.
#
# THE "DONE" CONTRACT (strata train <-> slurm/):
#   When `strata train` ends a campaign with exit 0 (it reached [train] steps,
#   or its data ran out without `follow`) it writes the file DONE into the
#   checkpoint directory ([checkpoint] dir of the config; relative paths are
#   relative to the config file): one line "FINAL_STEP TARGET_STEPS\n", the
#   step of its last checkpoint and the [train] steps it ran with, as decimal
#   numbers (a line with one number means both), written like a checkpoint
#   (temporary name, fsync, rename). A run that resumes with nothing left to
#   do writes DONE again and exits 0.
#   The campaign counts as done when DIR/DONE exists and its TARGET_STEPS is
#   >= the configured [train] steps (so raising steps to continue a finished
#   campaign starts it again, and a campaign whose data ran out early stays
#   done). This script and strata.sbatch read only the INI file and
#   `--set checkpoint.dir=...` / `--set train.steps=...` given after `--`
#   (as strata does, a relative dir in --set is relative to the current
#   directory: the one campaign.sh runs in, which is where the jobs run unless
#   an sbatch --chdir says otherwise; use absolute paths with --chdir).
#
# If the campaign is done already, this script submits nothing and exits 0.
# Exit status: 0 submitted (or nothing to do), 2 bad usage, 1 sbatch failed
# (the jobs submitted so far are listed and keep their dependencies).
set -euo pipefail

usage() {
    echo "usage: $0 CONFIG.ini N_JOBS [sbatch options...] [-- strata train args...]" >&2
    exit 2
}
(($# >= 2)) || usage
config=$1 njobs=$2; shift 2
[[ -r $config && -f $config ]] || { echo "campaign.sh: cannot read config '$config'" >&2; exit 2; }
[[ $njobs =~ ^[1-9][0-9]*$ ]] || { echo "campaign.sh: N_JOBS must be a positive integer, not '$njobs'" >&2; exit 2; }
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")

sbatch_args=() strata_args=()
while (($#)); do
    if [[ $1 == -- ]]; then shift; strata_args=("$@"); break; fi
    sbatch_args+=("$1"); shift
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script=${STRATA_SBATCH:-$here/strata.sbatch}
[[ -r $script ]] || { echo "campaign.sh: no sbatch template at $script" >&2; exit 2; }
# the jobs inherit this environment; make a relative STRATA survive --chdir
if [[ -n ${STRATA:-} && $STRATA == */* && $STRATA != /* ]]; then
    STRATA=$PWD/$STRATA
    export STRATA
fi

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

# ---- done already?
dir=$(ini_get "$config" checkpoint dir) || dir=ckpt   # strata's default: ckpt beside the config
steps=$(ini_get "$config" train steps) || steps=
base=$(dirname "$config")    # INI paths are relative to the config file
set -- "${strata_args[@]}"
while (($#)); do
    a=$1; shift
    if [[ $a == --set ]]; then a=${1:-}; shift || true; elif [[ $a == --set=* ]]; then a=${a#--set=}; else continue; fi
    case $a in checkpoint.dir=*) dir=${a#*=} base=$PWD ;; train.steps=*) steps=${a#*=} ;; esac
done
if [[ -z $dir ]]; then
    echo "campaign.sh: warning: no [checkpoint] dir in $config; cannot tell whether the campaign is done" >&2
else
    [[ $dir == /* ]] || dir=$base/$dir
    if [[ -r $dir/DONE ]]; then
        read -r done_step done_target _ < "$dir/DONE" || true
        done_target=${done_target:-${done_step:-}}
        if [[ $done_step =~ ^[0-9]+$ && $done_target =~ ^[0-9]+$ ]] &&
           { [[ ! $steps =~ ^[0-9]+$ ]] || ((done_target >= steps)); }; then
            echo "campaign.sh: campaign already complete ($dir/DONE says step $done_step of $done_target); nothing submitted"
            exit 0
        fi
    fi
fi

# ---- submit the chain
prev='' ids=()
for ((i = 1; i <= njobs; i++)); do
    dep=()
    [[ -n $prev ]] && dep=(--dependency="afterany:$prev")
    if ! out=$(sbatch --parsable "${dep[@]}" "${sbatch_args[@]}" "$script" "$config" "${strata_args[@]}"); then
        echo "campaign.sh: sbatch failed for job $i of $njobs; submitted so far: ${ids[*]:-none}" >&2
        exit 1
    fi
    prev=${out%%;*}
    ids+=("$prev")
    echo "campaign.sh: job $i of $njobs: $prev${dep:+ (after ${dep#--dependency=afterany:})}"
done
echo "campaign.sh: submitted ${ids[*]} for $config"
