#!/usr/bin/env bash
# A real one-node Slurm on this machine, for volseg's `--cluster slurm` tests and for
# trying the Slurm path by hand:
#
#   scripts/slurm.sh start    # install if missing, configure, start, wait until idle
#   scripts/slurm.sh status   # daemons and `sinfo`
#   scripts/slurm.sh stop     # stop the daemons (configuration and state stay)
#
# Needs root and a Debian/Ubuntu machine without systemd (a container or CI runner):
# the daemons are started directly, not through service units. `start` is idempotent.
#
# The node gets this machine's CPUs and memory, and fake GPUs (one per CPU, or
# $VOLSEG_SLURM_GPUS) so that `--gres=gpu:1` jobs run without a real device, in a
# default partition named $VOLSEG_SLURM_PARTITION (default `debug`). Configuration in
# /etc/slurm; state and daemon logs in $VOLSEG_SLURM_STATE (/var/lib/volseg-slurm).
set -euo pipefail

PARTITION="${VOLSEG_SLURM_PARTITION:-debug}"
STATE_DIR="${VOLSEG_SLURM_STATE:-/var/lib/volseg-slurm}"
LOG_DIR="$STATE_DIR/log"
RUN_DIR="$STATE_DIR/run"
CONF_DIR=/etc/slurm            # where the Debian-built commands look for slurm.conf
CONFIG_CHANGED=0
START_TIMEOUT="${VOLSEG_SLURM_START_TIMEOUT:-60}"
NODE="$(hostname -s)"

log() { echo "slurm.sh: $*" >&2; }
die() { log "$*"; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    log "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

# Node size from this machine. RealMemory leaves some room for the OS so that slurmd
# does not drain the node for "Low RealMemory" (it compares with what it measures).
node_cpus() { nproc --all; }
# One fake GPU per CPU, so that as many one-core GPU jobs (dask workers) as fit the
# CPUs can run at once.
node_gpus() { echo "${VOLSEG_SLURM_GPUS:-$(node_cpus)}"; }
node_memory_mb() { awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.95 }' /proc/meminfo; }

write_config() {
    local cpus mem defmem gpus i files
    cpus="$(node_cpus)"
    mem="$(node_memory_mb)"
    gpus="$(node_gpus)"
    # A job that does not say --mem gets DefMemPerCPU per CPU; without it one job
    # would take the node's whole memory and every other job would pend.
    defmem=$(( mem / cpus / 2 ))
    [ "$defmem" -ge 256 ] || defmem=256
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$RUN_DIR" "$STATE_DIR/ctld" "$STATE_DIR/d"
    cat >"$CONF_DIR/slurm.conf.new" <<EOF
# Written by volseg scripts/slurm.sh: a one-node Slurm for tests. Rewritten on start.
ClusterName=volseg
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
# No cgroups in a container: track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
GresTypes=gpu
ReturnToService=2
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# Short timeouts: a test notices a dead daemon quickly.
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=60
KillWait=5
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$gpus State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    # Without File= the node drains ("gres/gpu count too low"). Empty files stand in
    # for devices so that --gres=gpu:N is schedulable on a machine without a GPU
    # (task/none binds nothing, so the files are never opened).
    mkdir -p "$STATE_DIR/fake-gpu"
    files=""
    for i in $(seq 0 $(( gpus - 1 ))); do
        : >"$STATE_DIR/fake-gpu/gpu$i"
        files="$files${files:+,}$STATE_DIR/fake-gpu/gpu$i"
    done
    cat >"$CONF_DIR/gres.conf.new" <<EOF
# Written by volseg scripts/slurm.sh: $gpus fake GPU(s).
AutoDetect=off
NodeName=$NODE Name=gpu File=$files
EOF
    local f
    for f in slurm.conf gres.conf; do
        if ! cmp -s "$CONF_DIR/$f.new" "$CONF_DIR/$f"; then
            CONFIG_CHANGED=1
        fi
        mv "$CONF_DIR/$f.new" "$CONF_DIR/$f"
    done
}

pid_alive() {  # pid_alive PIDFILE
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

munge_pidfile=/run/munge/munged.pid

start_munge() {
    # munged refuses to run as root and needs its socket directory owned by munge.
    mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
    chmod 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 || mungekey --create
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if pid_alive "$munge_pidfile"; then
        return
    fi
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    su -s /bin/sh munge -c "munged --pid-file=$munge_pidfile" \
        || die "munged did not start (see /var/log/munge/munged.log)"
    munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
}

start_slurm() {
    if [ "$CONFIG_CHANGED" = 1 ]; then
        # Node definitions (CPUs, memory, GRES) are only read at daemon start.
        stop_daemon slurmd "$RUN_DIR/slurmd.pid"
        stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
    fi
    if ! pid_alive "$RUN_DIR/slurmctld.pid"; then
        slurmctld || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
    fi
    if ! pid_alive "$RUN_DIR/slurmd.pid"; then
        slurmd || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
    fi
}

node_state() { sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1; }

wait_idle() {
    local deadline state
    deadline=$(( $(date +%s) + START_TIMEOUT ))
    while :; do
        state="$(node_state || true)"
        case "$state" in
            idle)
                # sinfo shows the state slurmctld remembers, even with slurmd gone:
                # run one tiny job to prove the whole chain (munge, ctld, slurmd).
                if timeout 20 srun -N1 -n1 --mem=16 -t 1 --immediate=15 true >/dev/null 2>&1; then
                    return 0
                fi ;;
            mixed|allocated|completing)
                return 0 ;;
            drain*|drained*|down*|fail*)
                # A drained node stays drained across restarts; put it back in service.
                scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
        esac
        if [ "$(date +%s)" -ge "$deadline" ]; then
            sinfo -R >&2 || true
            tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
            die "node $NODE not idle after ${START_TIMEOUT}s (state: ${state:-none})"
        fi
        sleep 0.5
    done
}

stop_daemon() {  # stop_daemon NAME PIDFILE
    local pid i
    pid_alive "$2" || { rm -f "$2"; return 0; }
    pid="$(cat "$2")"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return 0; }
        sleep 0.25
    done
    log "$1 ($pid) did not stop on SIGTERM; sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$2"
}

cmd_start() {
    need_root
    install_packages
    write_config
    start_munge
    start_slurm
    wait_idle
    log "up: partition $PARTITION, node $NODE ($(node_cpus) CPUs, $(node_memory_mb) MB, gpu:$(node_gpus))"
}

cmd_stop() {
    need_root
    # Cancel leftover jobs so that their processes do not outlive slurmd.
    if pid_alive "$RUN_DIR/slurmctld.pid"; then
        scancel --full --quiet --partition="$PARTITION" 2>/dev/null || true
    fi
    stop_daemon slurmd "$RUN_DIR/slurmd.pid"
    stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
    stop_daemon munged "$munge_pidfile"
    log "stopped"
}

cmd_status() {
    local rc=0 name file
    for name in munged slurmctld slurmd; do
        case $name in
            munged) file=$munge_pidfile ;;
            *) file="$RUN_DIR/$name.pid" ;;
        esac
        if pid_alive "$file"; then
            echo "$name: running (pid $(cat "$file"))"
        else
            echo "$name: stopped"; rc=1
        fi
    done
    if [ $rc -eq 0 ]; then
        sinfo
    fi
    return $rc
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
