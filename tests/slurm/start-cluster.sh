#!/usr/bin/env bash
# Start a single-node SLURM cluster (munge, slurmctld, slurmd) on 127.0.0.1, for the tests.
#
#   bash tests/slurm/start-cluster.sh [DIR]      (default: $SPRAY_SLURM_DIR or /tmp/spray-slurm)
#   export SLURM_CONF=DIR/slurm.conf             (then sbatch, squeue, scancel reach it)
#
# Needs root on Debian/Ubuntu without systemd (a CI container). Installs the Debian packages
# slurmctld, slurmd, slurm-client and munge when they are missing (apt-get, no recommended
# packages, daemons not started by the packages). Everything the cluster writes (configuration,
# state, spool, logs, pid files) lives in DIR; munged uses the Debian paths (/etc/munge,
# /run/munge). Idempotent: a cluster already running from DIR is left as it is. The daemons this
# script starts are listed in DIR/started; tests/slurm/stop-cluster.sh stops exactly those.
# Exit codes: 0 running, 2 this machine cannot run it (not root, no apt-get), 1 failure.
set -euo pipefail

DIR=$(realpath -m "${1:-${SPRAY_SLURM_DIR:-/tmp/spray-slurm}}")
CPUS=${SPRAY_SLURM_CPUS:-8}          # CPUs the node offers to jobs (more than the cores: jobs
MEMORY=${SPRAY_SLURM_MEMORY:-64000}  # mostly wait on each other), and MB of memory
export SLURM_CONF=$DIR/slurm.conf
say() { echo "slurm cluster: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    say "needs root (installs packages, runs slurmd as root)"; exit 2
fi

cluster_up() {
    [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null &&
        [ -f "$DIR/slurmd.pid" ] && kill -0 "$(cat "$DIR/slurmd.pid")" 2>/dev/null &&
        sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

install_packages() {
    local pkgs=(slurmctld slurmd slurm-client munge) created=0
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        say "SLURM is not installed and there is no apt-get to install it"; exit 2
    fi
    # the packages' install scripts would start the daemons through init scripts: forbid that
    # with a policy-rc.d (only if the machine has none; ours is removed again afterwards)
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        created=1
    fi
    say "installing ${pkgs[*]}"
    local status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" \
        >"$DIR/apt.log" 2>&1 || {
        apt-get update -qq >>"$DIR/apt.log" 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${pkgs[@]}" >>"$DIR/apt.log" 2>&1
    } || status=$?
    if [ "$created" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ "$status" != 0 ]; then
        tail -20 "$DIR/apt.log" >&2; say "apt-get install failed"; exit 1
    fi
}

munge_up() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_up; then return 0; fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile /etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge_up && break; sleep 0.1; done
    munge_up || { say "munged does not answer"; exit 1; }
    echo "munged $(cat /run/munge/munged.pid)" >> "$DIR/started"
}

write_config() {
    local host node
    host=$(hostname -s)
    # the node's hardware as slurmd sees it, with the CPU count the tests want
    # (SlurmdParameters=config_overrides: the configured values count, not the detected ones)
    node="NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1"
    node+=" CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEMORY State=UNKNOWN"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat > "$SLURM_CONF" <<EOF
# single-node test cluster written by tests/slurm/start-cluster.sh
ClusterName=spraytest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${SPRAY_SLURMCTLD_PORT:-6817}
SlurmdPort=${SPRAY_SLURMD_PORT:-6818}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SlurmdParameters=config_overrides
MpiDefault=none
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
ReturnToService=2
MailProg=/bin/true
SchedulerParameters=sched_interval=2
KillWait=5
MinJobAge=60
$node
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

mkdir -p "$DIR"
if cluster_up; then
    say "already running from $DIR"; exit 0
fi
install_packages
start_munge
write_config
if ! { [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; }; then
    slurmctld -c -f "$SLURM_CONF"   # -c: fresh state, no jobs from an earlier cluster
    for _ in $(seq 100); do [ -s "$DIR/slurmctld.pid" ] && break; sleep 0.1; done
    echo "slurmctld $(cat "$DIR/slurmctld.pid")" >> "$DIR/started"
fi
if ! { [ -f "$DIR/slurmd.pid" ] && kill -0 "$(cat "$DIR/slurmd.pid")" 2>/dev/null; }; then
    slurmd -f "$SLURM_CONF"
    for _ in $(seq 100); do [ -s "$DIR/slurmd.pid" ] && break; sleep 0.1; done
    echo "slurmd $(cat "$DIR/slurmd.pid")" >> "$DIR/started"
fi
for _ in $(seq 300); do cluster_up && break; sleep 0.1; done
if ! cluster_up; then
    sinfo -N -l >&2 || true
    tail -20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    say "the node did not come up"; exit 1
fi
say "running from $DIR (export SLURM_CONF=$SLURM_CONF)"
