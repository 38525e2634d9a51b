#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the tests and by hand.
#
#   tests/slurm/cluster.sh up       start munged, slurmctld, slurmd; wait for the node to be idle
#   tests/slurm/cluster.sh down     cancel every job, stop the daemons by pid, clean up
#   tests/slurm/cluster.sh status   what is running (exit 0 when all three daemons are alive)
#   tests/slurm/cluster.sh env      print "export SLURM_CONF=..." for eval in a shell
#
# Everything lives in one state directory, $STRATA_SLURM_DIR (default
# /tmp/strata-slurm-$USER): slurm.conf, the munge key and socket, pid files,
# the controller's state, slurmd's spool and the logs. Client commands
# (sbatch, squeue, scontrol, srun) find this cluster through
#   export SLURM_CONF=$STRATA_SLURM_DIR/etc/slurm.conf
# Several clusters may run side by side (one per state directory): each picks
# its own pair of free TCP ports and its own munged.
#
# Debian's slurm-wlm and munge are installed with apt-get when missing (as
# root). No systemd: the daemons run in the foreground of their own sessions,
# started in the background by this script, with their pids recorded in
# $STRATA_SLURM_DIR/run/. `down` stops exactly those pids (and the job step
# daemons and tasks they started), so it is safe to call twice or after a
# failed `up`. Logs stay in $STRATA_SLURM_DIR/log/ after `down`.
#
# Environment: STRATA_SLURM_DIR (state directory), STRATA_SLURM_PORT (first
# port to try for slurmctld; slurmd gets the next), STRATA_SLURM_TIMEOUT
# (seconds `up` waits for an idle node, default 60).
set -euo pipefail

D=${STRATA_SLURM_DIR:-/tmp/strata-slurm-$(id -un)}
[[ $D == /* ]] || D=$PWD/$D
D=${D%/}
[[ -n $D && $D != /*/.. && $D != /. ]] || { echo "cluster.sh: bad STRATA_SLURM_DIR '$D'" >&2; exit 2; }
# munge, slurmd and PMIx put unix sockets under it (paths <= 107 bytes)
((${#D} <= 64)) || { echo "cluster.sh: STRATA_SLURM_DIR '$D' is too long (max 64 characters: unix socket paths live under it)" >&2; exit 2; }
CONF=$D/etc/slurm.conf
NODE=$(hostname -s)
TIMEOUT=${STRATA_SLURM_TIMEOUT:-60}
LOCK=/tmp/strata-slurm-ports.lock

say() { echo "cluster.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------- helpers

# pid from a pid file, only if it is alive and is the program we expect.
live_pid() {   # FILE COMM
    local f=$1 comm=$2 pid
    [[ -r $f ]] || return 1
    pid=$(tr -dc 0-9 < "$f")
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm"* ]] || return 1
    local st
    read -r _ _ st _ 2>/dev/null < "/proc/$pid/stat" || return 1
    [[ $st != Z ]] || return 1
    echo "$pid"
}

pid_running() {   # PID: alive and not a zombie
    local st
    [[ -n $1 ]] && read -r _ _ st _ 2>/dev/null < "/proc/$1/stat" && [[ $st != Z ]]
}

port_listening() {   # PORT
    local hex f files=()
    hex=$(printf '%04X' "$1")
    for f in /proc/net/tcp /proc/net/tcp6; do [[ -r $f ]] && files+=("$f"); done   # no tcp6 without IPv6
    awk -v h="$hex" '$4 == "0A" { split($2, a, ":"); if (a[2] == h) f = 1 } END { exit !f }' "${files[@]}"
}

pick_ports() {
    local p
    if [[ -n ${STRATA_SLURM_PORT:-} ]]; then
        p=$STRATA_SLURM_PORT
    else
        # start from a spot derived from the state directory so that two
        # clusters rarely probe the same ports, then walk up to free ones
        p=$(( 20000 + 2 * ( $(printf '%s' "$D" | cksum | cut -d' ' -f1) % 5000 ) ))
    fi
    local tries=0
    while port_listening "$p" || port_listening $((p + 1)); do
        p=$((p + 2)); tries=$((tries + 1))
        (( tries < 500 )) || die "no free pair of TCP ports found from ${STRATA_SLURM_PORT:-20000} up"
    done
    CTLD_PORT=$p
    SLURMD_PORT=$((p + 1))
}

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    ((${#missing[@]})) || return 0
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; install as root: apt-get install -y slurm-wlm munge"
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq slurmctld slurmd slurm-client munge >&2 || die "apt-get install failed"
}

plugin_dir() {
    local d
    for d in /usr/lib/x86_64-linux-gnu/slurm-wlm /usr/lib/aarch64-linux-gnu/slurm-wlm \
             /usr/lib/slurm-wlm /usr/lib64/slurm /usr/lib/slurm; do
        [[ -e $d/proctrack_linuxproc.so ]] && { echo "$d"; return 0; }
    done
    return 1
}

write_conf() {
    local pdir mpi=pmix
    pdir=$(plugin_dir) || die "Slurm plugins not found (is slurm-wlm installed?)"
    [[ -e $pdir/mpi_pmix.so || -e $pdir/mpi_pmix_v4.so || -e $pdir/mpi_pmix_v3.so ]] ||
        { say "warning: no mpi_pmix plugin in $pdir; MpiDefault=none"; mpi=none; }
    cat > "$CONF" <<EOF
# Written by tests/slurm/cluster.sh for a single-node test cluster; see
# tests/slurm/README.md for why each setting is what it is.
ClusterName=strata
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
PluginDir=$pdir
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may not start again until its old credential has
# expired (cred_expire + 1 s); the default 120 s would make every requeue take
# two minutes.
AuthInfo=socket=$D/munge/munge.socket.2,cred_expire=10
StateSaveLocation=$D/ctld
SlurmdSpoolDir=$D/spool/slurmd-%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups, no systemd: track job processes through /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=$mpi
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# schedule every second, start batch jobs without delay, backfill often
SchedulerParameters=sched_interval=1,batch_sched_delay=0,sched_min_interval=100000,bf_interval=1,defer_batch=0
JobRequeue=1
ReturnToService=2
# keep finished jobs visible to scontrol/squeue for a while (no accounting DB)
MinJobAge=300
KillWait=10
OverTimeLimit=0
InactiveLimit=0
MessageTimeout=10
SlurmdTimeout=60
SlurmctldTimeout=60
BatchStartTimeout=20
CompleteWait=0
# the node may declare more CPUs than it has (4 tasks on 2 cores)
SlurmdParameters=config_overrides
NodeName=$NODE NodeHostname=$NODE NodeAddr=127.0.0.1 CPUs=4 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    # PMIx puts each step's client directory in /tmp/spmix_appdir_<uid>_<job>.<step>
    # by default; job ids restart at 1 in every fresh cluster, so two clusters
    # (or a step killed earlier) would collide there. Keep them in the state dir.
    echo "PMIxCliTmpDirBase=$D/pmix" > "$D/etc/mpi.conf"
}

start_daemon() {   # NAME PIDFILE CMD...
    local name=$1 pidfile=$2; shift 2
    # (9>&-: the daemons must not inherit the port lock)
    SLURM_CONF=$CONF setsid "$@" </dev/null >>"$D/log/$name.out" 2>&1 9>&- &
    echo $! > "$pidfile"
}

wait_for() {   # SECONDS DAEMON|- CMD...: until CMD succeeds; fails early if DAEMON died
    local secs=$1 daemon=$2; shift 2
    local t0=$SECONDS
    until "$@" >/dev/null 2>&1; do
        (( SECONDS - t0 < secs )) || return 1
        # (not live_pid: for a moment after the start the pid is still bash or setsid)
        if [[ $daemon != - ]] && ! pid_running "$(cat "$D/run/$daemon.pid" 2>/dev/null)"; then
            say "$daemon exited"
            return 1
        fi
        sleep 0.5
    done
}

node_idle() {
    local s
    s=$(SLURM_CONF=$CONF sinfo -h -n "$NODE" -o %t 2>/dev/null) || return 1
    [[ $s == idle* ]]
}

show_logs() {
    local f
    for f in "$D"/log/*; do
        [[ -s $f ]] || continue
        echo "---- $f (last 15 lines)" >&2
        tail -n 15 "$f" >&2
    done
}

# ---------------------------------------------------------------- commands

cmd_up() {
    install_packages
    if [[ -r $CONF ]] && live_pid "$D/run/slurmctld.pid" slurmctld >/dev/null &&
       live_pid "$D/run/slurmd.pid" slurmd >/dev/null && live_pid "$D/run/munged.pid" munged >/dev/null; then
        wait_for "$TIMEOUT" - node_idle || die "cluster in $D is running but $NODE is not idle"
        say "already up ($D)"; return 0
    fi
    cmd_down quiet
    rm -rf "${D:?}"/etc "${D:?}"/munge "${D:?}"/run "${D:?}"/ctld "${D:?}"/spool "${D:?}"/pmix "${D:?}"/log
    mkdir -p "$D"
    chmod 0755 "$D"
    mkdir -p "$D"/etc "$D"/run "$D"/ctld "$D/spool/slurmd-$NODE" "$D"/pmix "$D"/log
    chmod 0755 "$D"/etc "$D"/run "$D"/ctld "$D"/spool "$D/spool/slurmd-$NODE" "$D"/pmix "$D"/log
    # munged insists on a socket directory that others may enter but not write
    mkdir -m 0755 "$D"/munge
    dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$D/munge/munge.key"

    exec 9>"$LOCK"
    flock -w 120 9 || die "could not take $LOCK"
    pick_ports
    write_conf

    start_daemon munged "$D/run/munged.pid" munged -F --force \
        --socket="$D/munge/munge.socket.2" --key-file="$D/munge/munge.key" \
        --pid-file="$D/run/munged.pid" --log-file="$D/log/munged.log" \
        --seed-file="$D/munge/munged.seed" --num-threads=2
    wait_for 20 munged bash -c "munge -n -S '$D/munge/munge.socket.2' | unmunge -S '$D/munge/munge.socket.2'" ||
        { show_logs; die "munged did not start (see $D/log)"; }

    start_daemon slurmctld "$D/run/slurmctld.pid" slurmctld -D -i -f "$CONF"
    wait_for 30 slurmctld bash -c "SLURM_CONF='$CONF' scontrol ping | grep -q UP" ||
        { show_logs; die "slurmctld is not answering (see $D/log)"; }

    start_daemon slurmd "$D/run/slurmd.pid" slurmd -D -f "$CONF" -N "$NODE"
    wait_for 30 slurmd port_listening "$SLURMD_PORT" ||
        { show_logs; die "slurmd is not listening on port $SLURMD_PORT (see $D/log)"; }
    exec 9>&-

    if ! wait_for "$TIMEOUT" - node_idle; then
        SLURM_CONF=$CONF sinfo -N -l >&2 || true
        show_logs
        die "node $NODE not idle after ${TIMEOUT}s (see $D/log)"
    fi
    say "up: node $NODE idle, ports $CTLD_PORT/$SLURMD_PORT, state in $D"
    say "use: export SLURM_CONF=$CONF"
}

# children of the given pids, recursively
descendants() {
    local -A kids=()
    local stat pid ppid rest
    for stat in /proc/[0-9]*/stat; do
        read -r pid _ rest 2>/dev/null < "$stat" || continue
        rest=${rest##*) }          # past "(comm) ", also when comm has spaces
        read -r _ ppid _ <<<"$rest"
        kids[$ppid]+="$pid "
    done
    local queue=("$@") out=() p c
    while ((${#queue[@]})); do
        p=${queue[0]}; queue=("${queue[@]:1}")
        for c in ${kids[$p]:-}; do out+=("$c"); queue+=("$c"); done
    done
    echo "${out[@]:-}"
}

# this cluster's step daemons: slurmstepd processes that hold its slurmd log
# open (their environment is the job's, so it cannot tell them apart)
stepd_pids() {
    local c pid f
    for c in /proc/[0-9]*/comm; do
        [[ $(cat "$c" 2>/dev/null) == slurmstepd ]] || continue
        pid=${c#/proc/}; pid=${pid%/comm}
        for f in /proc/"$pid"/fd/*; do
            if [[ $(readlink "$f" 2>/dev/null) == "$D/log/slurmd.log" ]]; then echo "$pid"; break; fi
        done
    done
}

stop_pids() {   # SECONDS PID...
    local secs=$1; shift
    local p alive t0=$SECONDS
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    while :; do
        alive=()
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
        ((${#alive[@]})) || return 0
        if (( SECONDS - t0 >= secs )); then
            kill -KILL "${alive[@]}" 2>/dev/null || true
            return 0
        fi
        sleep 0.2
    done
}

cmd_down() {
    local quiet=${1:-}
    local ctld slurmd munged jobs stepds procs
    ctld=$(live_pid "$D/run/slurmctld.pid" slurmctld) || ctld=
    slurmd=$(live_pid "$D/run/slurmd.pid" slurmd) || slurmd=
    munged=$(live_pid "$D/run/munged.pid" munged) || munged=
    if [[ -z $ctld$slurmd$munged ]] && [[ -z $(stepd_pids) ]]; then
        [[ -n $quiet ]] || say "down: nothing running for $D"
        rm -rf "${D:?}"/run "${D:?}"/munge "${D:?}"/spool "${D:?}"/ctld "${D:?}"/pmix
        return 0
    fi
    # cancel the jobs while the controller can still do it cleanly
    if [[ -n $ctld && -r $CONF ]]; then
        jobs=$(SLURM_CONF=$CONF timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ') || jobs=
        if [[ -n ${jobs// } ]]; then
            SLURM_CONF=$CONF timeout 10 scancel $jobs 2>/dev/null || true
            local t0=$SECONDS
            while [[ -n $(SLURM_CONF=$CONF timeout 5 squeue -h -o %A 2>/dev/null) ]] && (( SECONDS - t0 < 15 )); do
                sleep 0.5
            done
        fi
    fi
    # daemons first (so nothing new starts), then step daemons and their tasks
    stepds=$(stepd_pids)
    # shellcheck disable=SC2086
    procs=$(descendants ${stepds})
    # shellcheck disable=SC2086
    stop_pids 10 ${slurmd} ${ctld}
    # shellcheck disable=SC2086
    stop_pids 5 ${stepds} ${procs}
    # shellcheck disable=SC2086
    stop_pids 5 ${munged}
    rm -rf "${D:?}"/run "${D:?}"/munge "${D:?}"/spool "${D:?}"/ctld "${D:?}"/pmix
    [[ -n $quiet ]] || say "down: stopped ${ctld:+slurmctld($ctld) }${slurmd:+slurmd($slurmd) }${munged:+munged($munged) }$(wc -w <<<"$stepds $procs") step process(es); logs kept in $D/log"
}

cmd_status() {
    local ok=0 n p
    for n in munged slurmctld slurmd; do
        if p=$(live_pid "$D/run/$n.pid" "$n"); then
            echo "$n: running (pid $p)"
        else
            echo "$n: not running"; ok=1
        fi
    done
    if ((ok == 0)); then
        SLURM_CONF=$CONF sinfo -N -o '%N %t %c' || ok=1
        SLURM_CONF=$CONF squeue || true
    fi
    echo "state: $D"
    echo "export SLURM_CONF=$CONF"
    return $ok
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 up|down|status|env   (state in \$STRATA_SLURM_DIR, now $D)" >&2; exit 2 ;;
esac
