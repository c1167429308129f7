#!/usr/bin/env bash
# N "hosts" on this machine: network namespaces, each with its own hostname (UTS namespace),
# veth interface and private address, joined by a bridge that lives in a namespace of its own
# (nothing is added to the caller's network). `mpirun` runs on host 0 and reaches the others
# through tests/cluster/agent.sh (OpenMPI's plm_rsh_agent, in place of ssh); traffic is TCP.
#
# Source it, then:
#   cluster_up N [--rate R --delay D] [--mem-mb M]   make hosts h0..h{N-1}; sets CL_* variables
#   cluster_mpirun [mpirun args...]                  mpirun on h0 with the hostfile, btl tcp,self
#   cluster_exec I cmd...                            run a command on host I
#   cluster_down                                     remove everything (also on EXIT, via trap)
# Returns 77 from cluster_up when namespaces cannot be made (not root, no `ip netns`).
# Manual use: bash tests/cluster/cluster.sh N [--rate 1gbit --delay 200us] -- mpirun-args...

CL_DIR=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
CL_TAG=mxc$$      # unique per run: parallel runs never share a name
CL_N=0
CL_NETNS=()       # namespace of host i
CL_ADDR=()        # address of host i
CL_CG=""          # cgroup v1 memory folder for this run ("" when no caps)
CL_WORK=""
CL_TIMEOUT=${CL_TIMEOUT:-120}
CL_TC=$(command -v tc || echo /usr/sbin/tc)

cluster_log() { echo "cluster: $*" >&2; }

# cluster_up N [--rate R] [--delay D] [--mem-mb M]: a failed attempt leaves nothing behind.
cluster_up() {
  cluster_build "$@"
  local rc=$?
  if [[ $rc != 0 ]]; then cluster_down; fi
  return $rc
}

# cluster_has_netem: whether this kernel can delay packets (sch_netem), tried in a scratch namespace.
cluster_has_netem() {
  local ns=${CL_TAG}probe ok=1
  ip netns add "$ns" 2>/dev/null || return 1
  ip netns exec "$ns" "$CL_TC" qdisc add dev lo root netem delay 1ms 2>/dev/null || ok=0
  ip netns del "$ns"
  ((ok))
}

cluster_build() {
  local n=$1; shift
  local rate="" delay="" mem_mb=""
  while [[ $# -gt 0 ]]; do
    case $1 in
      --rate) rate=$2; shift 2 ;;
      --delay) delay=$2; shift 2 ;;
      --mem-mb) mem_mb=$2; shift 2 ;;
      *) cluster_log "unknown option $1"; return 2 ;;
    esac
  done
  if [[ $(id -u) != 0 ]] || ! command -v ip >/dev/null || ! ip netns add "${CL_TAG}probe" 2>/dev/null; then
    cluster_log "SKIP: cannot create network namespaces here (need root and iproute2)"
    return 77
  fi
  ip netns del "${CL_TAG}probe"
  CL_N=$n
  for ((i = 0; i < n; i++)); do CL_NETNS[i]=${CL_TAG}h$i; done
  CL_WORK=$(mktemp -d "/tmp/${CL_TAG}.XXXXXX")
  local sw=${CL_TAG}sw i
  ip netns add "$sw" || return 1
  ip -n "$sw" link add br0 type bridge || return 1
  ip -n "$sw" link set br0 up || return 1
  : >"$CL_WORK/hostfile"
  : >"$CL_WORK/hosts.map"
  for ((i = 0; i < n; i++)); do
    local ns=${CL_TAG}h$i addr=10.77.0.$((i + 1))
    CL_ADDR[i]=$addr
    ip netns add "$ns" || return 1
    # Both ends are created inside their namespaces: no interface ever appears outside them.
    ip -n "$ns" link add eth0 type veth peer name p$i netns "$sw" || return 1
    ip -n "$sw" link set p$i master br0 || return 1
    ip -n "$sw" link set p$i up || return 1
    ip -n "$ns" addr add "$addr/24" dev eth0 || return 1
    ip -n "$ns" link set eth0 up || return 1
    ip -n "$ns" link set lo up || return 1
    # Give up on a peer that stops acknowledging after ~3 s instead of Linux's ~15 min, so that
    # mpirun's abort does not wait on a host whose link is gone (docs/distributed.md).
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_retries2=3 || return 1
    if [[ -n $delay ]]; then
      # Shapes what leaves each host, so a round trip between two hosts costs 2 × delay.
      ip netns exec "$ns" "$CL_TC" qdisc add dev eth0 root netem delay "$delay" ${rate:+rate $rate} || {
        cluster_log "cannot add netem on host $i (a kernel without sch_netem cannot shape delay)"; return 1; }
    elif [[ -n $rate ]]; then
      # Rate alone: a token bucket, which every kernel with traffic control has.
      ip netns exec "$ns" "$CL_TC" qdisc add dev eth0 root tbf rate "$rate" burst 256kb latency 100ms || return 1
    fi
    echo "$addr slots=1" >>"$CL_WORK/hostfile"
    echo "$addr $ns h$i" >>"$CL_WORK/hosts.map"
  done
  if [[ -n $mem_mb ]]; then
    local root=/sys/fs/cgroup/memory
    [[ -w $root ]] || { cluster_log "SKIP: no writable cgroup v1 memory controller at $root"; return 77; }
    CL_CG=$root/$CL_TAG
    mkdir -p "$CL_CG" || return 1
    for ((i = 0; i < n; i++)); do
      mkdir -p "$CL_CG/h$i" || return 1
      echo $((mem_mb * 1024 * 1024)) >"$CL_CG/h$i/memory.limit_in_bytes" || return 1
      echo 0 >"$CL_CG/h$i/memory.swappiness" 2>/dev/null
    done
  fi
  # The agent finds a host's namespace and cgroup from its address.
  { echo "CL_MAP=$CL_WORK/hosts.map"; echo "CL_CG=$CL_CG"; } >"$CL_WORK/agent.env"
  # Wait until the bridge forwards on every port (STP is off, so this is immediate or nearly).
  local k
  for k in $(seq 50); do
    [[ $(ip -n "$sw" -d link show master br0 | grep -c 'state forwarding') == "$n" ]] && break
    sleep 0.1
  done
  return 0
}

# cluster_exec I cmd...: runs on host I (its namespace, hostname and, with caps, its cgroup),
# killed after $CL_TIMEOUT seconds.
cluster_exec() {
  local i=$1; shift
  CL_ENV=$CL_WORK/agent.env timeout -k 5 "$CL_TIMEOUT" bash "$CL_DIR/agent.sh" --host-index "$i" "${CL_ADDR[i]}" "$@"
}

# cluster_mpirun [args...]: mpirun on host 0, ranks placed in hostfile order (one per host).
# The keepalive settings let mpirun notice within ~5 s that a host's daemon is unreachable
# (OpenMPI's default is 300 s + 9 × 20 s); otherwise an abort waits on the lost host.
cluster_mpirun() {
  cluster_exec 0 env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    mpirun --hostfile "$CL_WORK/hostfile" \
    --mca plm_rsh_agent "env CL_ENV=$CL_WORK/agent.env bash $CL_DIR/agent.sh" \
    --mca plm_rsh_no_tree_spawn 1 \
    --mca btl tcp,self --mca pml ob1 \
    --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
    --mca oob_tcp_keepalive_time 2 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3 \
    "$@"
}

# cluster_pids I: processes (besides the agent's shell) inside host I's namespace.
cluster_pids() { ip netns pids "${CL_NETNS[$1]}" 2>/dev/null; }

cluster_down() {
  local i pid
  for ((i = 0; i < CL_N; i++)); do
    for pid in $(cluster_pids $i); do kill -9 "$pid" 2>/dev/null; done
  done
  for ((i = 0; i < CL_N; i++)); do ip netns del "${CL_NETNS[i]}" 2>/dev/null; done
  ip netns del "${CL_TAG}sw" 2>/dev/null
  if [[ -n $CL_CG ]]; then
    sleep 0.2  # killed processes leave their cgroups as they exit
    for ((i = 0; i < CL_N; i++)); do rmdir "$CL_CG/h$i" 2>/dev/null; done
    rmdir "$CL_CG" 2>/dev/null
  fi
  [[ -n $CL_WORK ]] && rm -rf "$CL_WORK"
  CL_N=0 CL_CG="" CL_WORK=""
}
trap cluster_down EXIT
trap 'exit 130' INT TERM

# Manual use: bash tests/cluster/cluster.sh N [--rate R --delay D --mem-mb M] -- mpirun args...
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  n=${1:?usage: cluster.sh N [--rate R] [--delay D] [--mem-mb M] -- mpirun-args...}; shift
  opts=()
  while [[ $# -gt 0 && $1 != -- ]]; do opts+=("$1"); shift; done
  [[ ${1:-} == -- ]] && shift
  cluster_up "$n" "${opts[@]}" || exit $?
  cluster_mpirun -np "$n" "$@"
fi
