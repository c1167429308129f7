#!/usr/bin/env bash
# Stands in for ssh on the namespace "hosts" of tests/cluster/cluster.sh: OpenMPI's
# plm_rsh_agent calls it as `agent.sh [ssh options] ADDRESS COMMAND-STRING`. It enters the
# host's network namespace, gives it its own hostname, puts it under the host's memory cap
# (when the cluster has caps) and runs the command there.
# cluster.sh also calls it as `agent.sh --host-index I ADDRESS cmd args...` (argv, no shell).
set -u
# shellcheck source=/dev/null
source "${CL_ENV:?agent.sh: set CL_ENV to the agent.env of a cluster}"
argv=0
if [[ ${1:-} == --host-index ]]; then argv=1; shift 2; fi
while [[ ${1:-} == -* ]]; do shift; done  # ssh options OpenMPI may add (e.g. -x)
addr=${1:?agent.sh: no host}; shift
read -r _ ns name < <(awk -v a="$addr" '$1 == a' "$CL_MAP")
[[ -n ${ns:-} ]] || { echo "agent.sh: $addr is not a host of this cluster ($CL_MAP)" >&2; exit 255; }
if [[ -n $CL_CG ]]; then
  cg=$CL_CG/$name
  echo $$ >"$cg/cgroup.procs" || { echo "agent.sh: cannot enter cgroup $cg" >&2; exit 255; }
fi
# nsenter rather than `ip netns exec`: only the network namespace changes, so /sys (and the
# cgroup tree under it) stays visible to the agents mpirun starts from host 0.
if ((argv)); then
  exec nsenter --net=/run/netns/"$ns" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$name" "$@"
fi
exec nsenter --net=/run/netns/"$ns" unshare --uts sh -c 'hostname "$0" && eval "$1"' "$name" "$*"
