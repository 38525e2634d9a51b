#!/usr/bin/env bash
# A cluster of N hosts on this machine, made of Linux network namespaces, for
# multi-node MPI tests over real TCP (see tests/netns/README.md).
#
#   cluster.sh up [N]          make N hosts (default 3), build allreduce_loop
#   cluster.sh down            kill everything in the namespaces, delete them (safe twice)
#   cluster.sh status          namespaces, links, processes
#   cluster.sh hosts           the host names, one per line
#   cluster.sh run HOST CMD... run CMD on HOST (in its namespace, with its hostname)
#   cluster.sh mpirun ARGS...  Open MPI's mpirun, from the head node, across the hosts
#   cluster.sh cut HOST        take HOST's link down (its switch port: silence, no error)
#   cluster.sh heal HOST       bring it back up
#   cluster.sh kill HOST       SIGKILL every process on HOST
#   cluster.sh link-up HOST    exit 0 when HOST's link is up (not cut)
#
# Layout, for prefix P (STRATA_NETNS_PREFIX, default "strata") and subnet S
# (STRATA_NETNS_SUBNET, default 10.213.77, a /24):
#   P-sw      the switch: bridge br0 and one port pK per host; no address
#   P-head    the head (login) node, S.2: mpirun runs here, and no ranks
#   P-hK      host K = 0..N-1, S.(10+K); its interface is eth0
# Each host is one namespace joined to the switch by a veth pair (eth0 in the
# host, pK in the switch). The root namespace is not touched: no interface,
# route or address is added to it. Names resolve inside the cluster through
# /etc/netns/NS/hosts, which `ip netns exec` mounts over /etc/hosts in that
# namespace (the root /etc/hosts is left alone). Commands run in a host get a
# UTS namespace of their own whose hostname is the host's name, so Open MPI
# sees N distinct nodes (its session directories are named after the host).
#
# State (hostfile, hosts, built programs) lives in STRATA_NETNS_DIR (default
# /tmp/P-netns). Two clusters with different prefixes are fully separate
# (even on the same subnet: each has its own switch).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
P=${STRATA_NETNS_PREFIX:-strata}
S=${STRATA_NETNS_SUBNET:-10.213.77}
D=${STRATA_NETNS_DIR:-/tmp/$P-netns}
[[ $D == /* ]] || D=$PWD/$D
D=${D%/}

say() { echo "cluster.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

[[ $P =~ ^[a-z][a-z0-9-]{0,23}$ ]] || die "bad STRATA_NETNS_PREFIX '$P' (lower-case letters, digits, '-'; at most 24)"
[[ $S =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || die "bad STRATA_NETNS_SUBNET '$S' (three octets, e.g. 10.213.77)"
[[ -n $D && $D != / && $D != /tmp ]] || die "bad STRATA_NETNS_DIR '$D'"

SW=$P-sw
HEAD=$P-head
HEAD_IP=$S.2

need_root() {
    local what=$1
    if [[ $(id -u) != 0 ]]; then
        die "$what needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN, for ip netns); uid is $(id -u)"
    fi
    command -v ip >/dev/null || die "$what needs iproute2 (the ip command)"
    command -v unshare >/dev/null || die "$what needs unshare (util-linux)"
}

# our namespaces, from `ip netns list`
our_ns() {
    ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$P-(sw|head|h[0-9]+)\$" || true
}

ns_exists() { [[ -e /run/netns/$1 ]]; }

# HOST (a name P-hK or P-head, the short hK / head / K, or an address) -> namespace
host_ns() {
    local h=$1 ns=
    case $h in
        "$P"-head | head | "$HEAD_IP") ns=$HEAD ;;
        "$P"-h[0-9]*) ns=$h ;;
        h[0-9]*) ns=$P-$h ;;
        [0-9] | [0-9][0-9] | [0-9][0-9][0-9]) ns=$P-h$h ;;
        "$S".*)
            local o=${h##*.}
            [[ $o =~ ^[0-9]+$ ]] && ((o >= 10)) && ns=$P-h$((o - 10))
            ;;
    esac
    [[ -n $ns ]] && ns_exists "$ns" || die "no host '$h' in cluster '$P' (see: $0 hosts)"
    echo "$ns"
}

host_index() { # namespace P-hK -> K
    local ns=$1
    [[ $ns == "$P"-h* ]] || die "'$ns' is not a compute host (cut/heal/kill take P-hK)"
    echo "${ns#"$P"-h}"
}

# SIGKILL every process in namespace NS, until none is left (up to ~5 s)
kill_ns() {
    local ns=$1 pids tries=0
    while :; do
        pids=$(ip netns pids "$ns" 2>/dev/null | grep -vx "$$" || true)
        [[ -z $pids ]] && return 0
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null || true
        ((++tries <= 50)) || { say "warning: processes left in $ns: $(paste -sd' ' <<< "$pids")"; return 1; }
        sleep 0.1
    done
}

# ---------------------------------------------------------------- subcommands

cmd_down() {
    need_root down
    local ns rc=0
    for ns in $(our_ns); do kill_ns "$ns" || rc=1; done
    for ns in $(our_ns); do ip netns del "$ns" 2>/dev/null || { say "warning: cannot delete $ns"; rc=1; }; done
    for ns in "$D"/ns/*; do # /etc/netns dirs we made (listed in the state dir)
        [[ -e $ns ]] || continue
        rm -rf "/etc/netns/$(basename "$ns")"
    done
    for ns in /etc/netns/"$P"-sw /etc/netns/"$P"-head /etc/netns/"$P"-h[0-9]*; do
        [[ -e $ns ]] && rm -rf "$ns"
    done
    rmdir /etc/netns 2>/dev/null || true # only when empty (then it was ours)
    # the state directory, only if `up` made it (it holds the marker)
    [[ -e $D/.strata-netns ]] && rm -rf "$D"
    return $rc
}

UP_OK=1 # 0 while `up` runs: its EXIT trap then tears a half-made cluster down
# shellcheck disable=SC2034
cmd_up() {
    need_root up
    local n=${1:-3}
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 200)) || die "up: N must be 1..200 (got '$n')"
    [[ -z $(our_ns) ]] || die "cluster '$P' is already up ($(our_ns | tr '\n' ' ')); run '$0 down' first"
    command -v mpicc >/dev/null || die "up needs mpicc (libopenmpi-dev)"
    UP_OK=0
    ip netns add "$SW" 2>/dev/null || die "cannot create network namespace $SW (need root, CAP_SYS_ADMIN; in a container: --privileged)"
    # from here on, a failure leaves a half-made cluster: tear it down
    trap 'if ((!UP_OK)); then say "up failed; tearing down"; cmd_down || true; fi' EXIT
    if [[ -e $D && ! -e $D/.strata-netns && -n $(ls -A "$D" 2>/dev/null) ]]; then
        die "STRATA_NETNS_DIR $D exists and is not a cluster state directory; pick another"
    fi
    rm -rf "$D"
    mkdir -p "$D/bin" "$D/ns"
    echo "$P" > "$D/.strata-netns"
    ip -n "$SW" link set lo up
    ip -n "$SW" link add br0 type bridge
    ip -n "$SW" link set br0 up

    local hosts="127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
$HEAD_IP $HEAD"
    local k
    for ((k = 0; k < n; k++)); do hosts+=$'\n'"$S.$((10 + k)) $P-h$k"; done
    printf '# cluster %s (tests/netns/cluster.sh)\n%s\n' "$P" "$hosts" > "$D/hosts"
    : > "$D/hostfile"
    for ((k = 0; k < n; k++)); do echo "$P-h$k slots=1" >> "$D/hostfile"; done
    echo "$n" > "$D/n"

    # one namespace per node; port index: K for hosts, n for the head
    local ns ip port
    for ((k = 0; k <= n; k++)); do
        if ((k < n)); then ns=$P-h$k ip=$S.$((10 + k)); else ns=$HEAD ip=$HEAD_IP; fi
        port=p$k
        ip netns add "$ns"
        touch "$D/ns/$ns"
        mkdir -p "/etc/netns/$ns"
        cp "$D/hosts" "/etc/netns/$ns/hosts"
        ip -n "$ns" link set lo up
        ip link add eth0 netns "$ns" type veth peer name "$port" netns "$SW"
        ip -n "$SW" link set "$port" master br0
        ip -n "$SW" link set "$port" up
        ip -n "$ns" addr add "$ip/24" dev eth0
        ip -n "$ns" link set eth0 up
    done
    echo "$n" > "$D/headport" # the head's switch port is p$n

    # every host reaches every other (and the head) over TCP; no ping on this machine
    local tries
    for ((k = 0; k < n; k++)); do
        tries=0
        until out=$(timeout 2 ip netns exec "$HEAD" bash -c "exec 3<>/dev/tcp/$S.$((10 + k))/1" 2>&1) ||
            [[ $out == *refused* ]]; do
            # "connection refused" means the host answered (nothing listens on port 1)
            ((++tries < 100)) || die "host $P-h$k ($S.$((10 + k))) does not answer from the head: $out"
            sleep 0.1
        done
    done

    mpicc -O2 -Wall -pthread -o "$D/bin/allreduce_loop" "$HERE/allreduce_loop.c"
    UP_OK=1
    say "up: $n hosts ${P}-h0..${P}-h$((n - 1)) on $S.0/24 (head $HEAD $HEAD_IP), state in $D"
}

cmd_status() {
    local ns
    [[ -n $(our_ns) ]] || { echo "cluster '$P' is down"; return 1; }
    echo "cluster '$P', state in $D"
    for ns in $(our_ns); do
        printf '%-16s' "$ns"
        if [[ $ns == "$SW" ]]; then
            ip -n "$ns" -br link | awk '$1 ~ /^p[0-9]+/ {sub(/@.*/, "", $1); printf " %s:%s", $1, $2}'
        else
            ip -n "$ns" -br addr show dev eth0 | awk '{printf " %s %s", $2, $3}'
        fi
        local pids
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [[ -n $pids ]] && printf '  procs: %s' "$(ps -o comm= -p "$(paste -sd, <<< "$pids")" | sort | uniq -c | awk '{printf "%s%sx%s", s, $1, $2; s=" "}')"
        echo
    done
}

cmd_hosts() {
    [[ -r $D/n ]] || die "cluster '$P' is not up"
    local n k
    n=$(cat "$D/n")
    for ((k = 0; k < n; k++)); do echo "$P-h$k"; done
}

# run CMD in namespace NS with hostname NAME, in a UTS namespace of its own
exec_in() {
    local ns=$1
    shift
    exec ip netns exec "$ns" unshare --uts -- /bin/sh -c 'hostname "$0" && exec "$@"' "$ns" "$@"
}

cmd_run() {
    need_root run
    (($# >= 2)) || die "usage: $0 run HOST CMD..."
    local ns
    ns=$(host_ns "$1")
    shift
    exec_in "$ns" "$@"
}

# is MCA parameter NAME set by the user's arguments or environment?
user_sets() {
    local name=$1 a prev=
    [[ -n $(printenv "OMPI_MCA_$name" 2>/dev/null) ]] && return 0
    for a in "${USER_ARGS[@]}"; do
        [[ ($prev == --mca || $prev == -mca || $prev == --gmca || $prev == -gmca) && $a == "$name" ]] && return 0
        prev=$a
    done
    return 1
}

cmd_mpirun() {
    need_root mpirun
    [[ -r $D/hostfile ]] && ns_exists "$HEAD" || die "cluster '$P' is not up (run '$0 up' first)"
    USER_ARGS=("$@")
    local args=(--allow-run-as-root --oversubscribe)
    # shellcheck disable=SC2054
    local -A mca=(
        [plm_rsh_agent]=$HERE/rsh-agent.sh
        [plm_rsh_no_tree_spawn]=1
        [pml]=ob1
        [btl]=tcp,self
        [btl_tcp_if_include]=$S.0/24
        [oob_tcp_if_include]=$S.0/24
    )
    local k
    for k in plm_rsh_agent plm_rsh_no_tree_spawn pml btl btl_tcp_if_include oob_tcp_if_include; do
        user_sets "$k" || args+=(--mca "$k" "${mca[$k]}")
    done
    local a has_hosts=0
    for a in "$@"; do
        case $a in --host | -host | -H | --hostfile | -hostfile | --machinefile | -machinefile | --default-hostfile) has_hosts=1 ;; esac
    done
    ((has_hosts)) || args+=(--hostfile "$D/hostfile")
    # every host sees all the machine's cores: Open MPI's default binding
    # (--bind-to core for <= 2 ranks a node) would put every host's rank 0 on
    # core 0 of the one real machine
    local has_bind=0
    for a in "$@"; do
        case $a in --bind-to | -bind-to | --bind-to=* | --cpu-set | -cpu-set | --rankfile | -rf) has_bind=1 ;; esac
    done
    ((has_bind)) || args+=(--bind-to none)
    # the agent finds this cluster's hosts through these
    export STRATA_NETNS_PREFIX=$P STRATA_NETNS_SUBNET=$S STRATA_NETNS_DIR=$D
    exec_in "$HEAD" mpirun "${args[@]}" "$@"
}

cmd_cut() {
    need_root cut
    (($# == 1)) || die "usage: $0 cut HOST"
    local ns k
    ns=$(host_ns "$1")
    k=$(host_index "$ns")
    ip -n "$SW" link set "p$k" down
}

cmd_heal() {
    need_root heal
    (($# == 1)) || die "usage: $0 heal HOST"
    local ns k
    ns=$(host_ns "$1")
    k=$(host_index "$ns")
    ip -n "$SW" link set "p$k" up
}

# exit 0 when HOST's link is up (the rsh agent's stand-in for ssh's connect)
cmd_link_up() {
    (($# == 1)) || die "usage: $0 link-up HOST"
    local ns k
    ns=$(host_ns "$1")
    [[ $ns == "$HEAD" ]] && k=$(cat "$D/headport") || k=$(host_index "$ns")
    ip -n "$SW" link show "p$k" 2>/dev/null | head -n 1 | grep -q '[<,]UP[,>]'
}

cmd_kill() {
    need_root kill
    (($# == 1)) || die "usage: $0 kill HOST"
    local ns
    ns=$(host_ns "$1")
    host_index "$ns" >/dev/null
    kill_ns "$ns"
}

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

(($# >= 1)) || { usage >&2; exit 2; }
sub=$1
shift
case $sub in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    hosts) cmd_hosts ;;
    run) cmd_run "$@" ;;
    mpirun) cmd_mpirun "$@" ;;
    cut) cmd_cut "$@" ;;
    heal) cmd_heal "$@" ;;
    kill) cmd_kill "$@" ;;
    link-up) cmd_link_up "$@" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
