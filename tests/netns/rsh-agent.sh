#!/usr/bin/env bash
# The "ssh" of a tests/netns cluster: Open MPI's rsh launcher calls it as
#   rsh-agent.sh [ssh options] HOST COMMAND...
# (--mca plm_rsh_agent, set by `cluster.sh mpirun`) to start its daemon (orted)
# on HOST. It runs COMMAND with /bin/bash -c, as ssh's remote shell would, inside
# HOST's network namespace and with HOST as hostname (cluster.sh run).
#
# A host whose link is cut (cluster.sh cut) is refused, as ssh would fail to
# connect (exit 255); the launch itself never crosses the test network.
#
# HOST is a host name (strata-h1), a short one (h1) or its address (10.213.77.11);
# the cluster is picked by STRATA_NETNS_PREFIX / STRATA_NETNS_SUBNET /
# STRATA_NETNS_DIR (cluster.sh mpirun exports them; defaults as in cluster.sh).
#
# Unlike ssh, the environment is passed on as it is: PATH, LD_LIBRARY_PATH,
# OPENBLAS_CORETYPE, OMP_NUM_THREADS and the rest reach orted and, through it,
# the ranks; so does the current directory. Variables that mpirun sets for its
# own children (OMPI_*, PMIX_*, ORTE_*, except OMPI_MCA_* which the user may
# have set) are dropped: an ssh login would not have them, and orted gets what
# it needs on its command line.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# skip ssh options; those listed take an argument
while (($#)) && [[ $1 == -* ]]; do
    case $1 in
        -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;
        --) shift; break ;;
        *) shift ;;
    esac
done
(($# >= 2)) || { echo "rsh-agent.sh: usage: rsh-agent.sh [ssh options] HOST COMMAND..." >&2; exit 255; }
host=${1#*@}
shift
cmd="$*"

# ssh would not get through to a host whose link is cut: fail as it does
if ! "$HERE/cluster.sh" link-up "$host"; then
    echo "ssh: connect to host $host port 22: No route to host (rsh-agent.sh: its link is cut)" >&2
    exit 255
fi

unset_args=()
while IFS='=' read -r name _; do
    case $name in
        OMPI_MCA_*) ;;
        OPAL_PREFIX) ;;
        OMPI_* | PMIX_* | ORTE_* | OPAL_*) unset_args+=(-u "$name") ;;
    esac
done < <(env)

exec env "${unset_args[@]}" "$HERE/cluster.sh" run "$host" /bin/bash -c "$cmd"
