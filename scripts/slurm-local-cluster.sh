#!/bin/bash
# A real one-machine SLURM cluster (slurmctld + slurmd + munge) for tests and demos; idempotent.
#   scripts/slurm-local-cluster.sh          install slurm-wlm and munge if missing (apt, root), configure, start
#   scripts/slurm-local-cluster.sh stop     stop the daemons (slurmd, slurmctld, munged) and wait until they are gone
# Partition "debug" holds this machine with all its CPUs. Needs root (daemons run as root, SlurmUser=root).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
LOG=/var/log/slurm

stop() {  # by name: a daemon restarted by hand has no pid file of ours
    for daemon in slurmd slurmctld munged; do pkill -x "$daemon" 2>/dev/null || true; done
    local left
    for _ in $(seq 100); do  # up to 10 s for them to exit (pgrep -x takes one name of at most 15 characters)
        left=$(for daemon in slurmd slurmctld munged; do pgrep -x "$daemon" >/dev/null && echo "$daemon"; done || true)
        [ -z "$left" ] && return 0
        sleep 0.1
    done
    echo "slurm-local-cluster: still running: $left" >&2
    return 1
}

if [ "${1:-start}" = stop ]; then
    stop
    exit $?
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm-local-cluster: needs root (apt-get and the daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm-local-cluster: installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q slurm-wlm munge >/dev/null
fi

# munge: one key, its socket directory, the daemon.
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
fi

HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG" /run/slurm
WANT="$(cat <<CONFEOF
# Written by scripts/slurm-local-cluster.sh: a one-machine cluster.
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.log
MpiDefault=none
KillWait=5
MinJobAge=300
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONFEOF
)"
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$WANT" ]; then
    printf '%s\n' "$WANT" >"$CONF"
    stop  # a new configuration: restart the daemons
    sleep 0.5
fi

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
running /run/slurm/slurmctld.pid || slurmctld
running /run/slurm/slurmd.pid || slurmd

for _ in $(seq 100); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "slurm-local-cluster: up ($HOST, $CPUS CPUs, partition debug)"
        exit 0
    fi
    sleep 0.2
done
echo "slurm-local-cluster: the node did not become idle; see $LOG/slurmctld.log and $LOG/slurmd.log" >&2
sinfo >&2 || true
exit 1
