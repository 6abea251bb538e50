#!/usr/bin/env bash
# Start a one-node SLURM cluster with job accounting on this machine, for tests.
#
# What it does (as root, on Debian/Ubuntu; no init system needed):
#   1. installs munge, MariaDB, slurmdbd, slurmctld, slurmd and the SLURM
#      clients with apt-get when any is missing (apt-get update once);
#   2. writes /etc/slurm/{slurm.conf,slurmdbd.conf,gres.conf} for this host:
#      cluster "lmft", one node with the CPUs and memory `slurmd -C` reports,
#      partitions "cpu" (default) and "gpu" on that node, proctrack/linuxproc
#      and task/none (no cgroups, which containers often lack);
#   3. starts the daemons directly (no init system needed): munged, mariadbd,
#      slurmdbd, slurmctld, slurmd; registers the cluster with sacctmgr;
#   4. waits until `sinfo` shows the node up and `sacct` answers, and when it
#      started anything, runs a one-second smoke job to COMPLETED in sacct.
#
# Idempotent: a second call finds the daemons running and the configuration
# unchanged, checks `sinfo`/`sacct` and returns within a second or two. A
# changed configuration restarts the SLURM daemons.
#
# Exit status: 0 ready; 1 a daemon or check failed (the message says which and
# names the log); 2 not root; 3 the packages are missing and cannot be
# installed (no apt-get, or apt-get failed, e.g. offline).
#
# Environment:
#   LMFT_SLURM_FAKE_GPUS  GPUs the node advertises as GRES (default 2, 0 = none).
#                         Stand-ins (device nodes like /dev/null): they only
#                         let jobs that request GPUs (--gpus, --gres=gpu) be
#                         scheduled here; such jobs still run on the CPU.
#   LMFT_SLURM_TIMEOUT    seconds to wait for each daemon (default 120).
#   LMFT_SLURM_FORCE=1    overwrite an /etc/slurm/slurm.conf not written by
#                         this script (refused otherwise, to protect a real
#                         cluster's configuration).
# Logs: /var/log/slurm/{slurmdbd,slurmctld,slurmd}.log, /var/log/mysql/error.log.
#
# Then run a workflow through it (tests/slurm/demo takes about 25 s):
#   snakemake -s tests/slurm/demo/Snakefile -d "$(mktemp -d)" --profile profiles/slurm \
#       --jobs 2 --slurm-init-seconds-before-status-checks 1 --seconds-between-status-checks 1
# The last two flags are for this test cluster only: they make the executor
# plugin ask sacct about its jobs every second or so instead of after 40 s.
# Stop the daemons with tests/slurm/teardown_slurm.sh.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
export LC_ALL=C

CLUSTER=lmft
FAKE_GPUS=${LMFT_SLURM_FAKE_GPUS:-2}
TIMEOUT=${LMFT_SLURM_TIMEOUT:-120}
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
FAKE_GPU_DIR=/var/lib/slurm/fake-gpu
# Which daemons this script started, so that teardown_slurm.sh stops only those.
MARK_DIR=/run/lmft-slurm
MARKER="# Written by lmft tests/slurm/setup_slurm.sh; rerun it instead of editing."
PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)

say() { echo "setup_slurm: $*"; }
die() {
    local code=$1
    shift
    echo "setup_slurm: ERROR: $*" >&2
    exit "$code"
}

# wait_for SECONDS MESSAGE CMD...: poll CMD every half second until it
# succeeds (then print MESSAGE), or fail after SECONDS.
wait_for() {
    local limit=$1 message=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
    say "$message"
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pidfile FILE NAME: TERM the process named in FILE and wait for it to exit.
stop_pidfile() {
    local file=$1 name=$2 pid
    pid_alive "$file" || return 0
    pid=$(cat "$file")
    say "stopping $name (pid $pid) to load the new configuration"
    kill "$pid"
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    die 1 "$name (pid $pid) did not stop within 30 s"
}

# write_if_changed PATH MODE OWNER: install stdin at PATH with MODE and OWNER;
# set wrote=1 if the content differs from what PATH held.
write_if_changed() {
    local path=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if ! { [[ -f $path ]] && cmp -s "$tmp" "$path"; }; then
        say "writing $path (changed)"
        wrote=1
    fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$path"
    rm -f "$tmp"
}

# ---------------------------------------------------------------- preconditions
[[ $(id -u) -eq 0 ]] || die 2 "must run as root (it installs packages and starts system daemons)"
[[ $FAKE_GPUS =~ ^[0-9]+$ ]] || die 1 "LMFT_SLURM_FAKE_GPUS must be a non-negative integer, got '$FAKE_GPUS'"
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die 1 "LMFT_SLURM_TIMEOUT must be a number of seconds, got '$TIMEOUT'"

# ---------------------------------------------------------------- packages
missing=()
for cmd in munged munge unmunge mariadbd mariadb mariadb-admin slurmdbd slurmctld slurmd \
    sbatch sacct sacctmgr sinfo scontrol; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if ((${#missing[@]})); then
    say "missing commands: ${missing[*]}; installing ${PACKAGES[*]}"
    command -v apt-get >/dev/null 2>&1 || die 3 "apt-get not found; install ${PACKAGES[*]} by hand"
    # Keep package scripts from starting daemons with the packaged (empty)
    # configuration; this script starts them itself below.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die 3 "apt-get update failed (no network to the Debian mirror?)"
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null ||
        die 3 "apt-get install ${PACKAGES[*]} failed"
    for cmd in "${missing[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || die 3 "$cmd still missing after installing ${PACKAGES[*]}"
    done
    say "packages installed"
fi

# ---------------------------------------------------------------- configuration
for conf in slurm.conf slurmdbd.conf gres.conf; do
    if [[ -f $CONF_DIR/$conf ]] && ! grep -qxF "$MARKER" "$CONF_DIR/$conf" &&
        [[ ${LMFT_SLURM_FORCE:-0} != 1 ]]; then
        die 1 "$CONF_DIR/$conf exists and was not written by this script; refusing to replace it (set LMFT_SLURM_FORCE=1 to override)"
    fi
done
node=$(hostname -s)
[[ -n $node ]] || die 1 "hostname -s is empty; set a host name first"
hw=$(slurmd -C 2>/dev/null | head -n 1) || die 1 "slurmd -C failed to detect this node's hardware"
# `slurmd -C` prints "NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..".
hw=${hw#NodeName=* }
[[ $hw == CPUs=* && $hw == *RealMemory=* ]] || die 1 "cannot parse 'slurmd -C' output: $hw"
# slurmd counts a GPU only if its gres.conf File is a device node; these are
# copies of /dev/null (task/none constrains no devices, so nothing opens them).
gres_node="" gres_types="" gres_conf=""
if ((FAKE_GPUS > 0)); then
    install -d -m 0755 "$FAKE_GPU_DIR"
    for ((i = 0; i < FAKE_GPUS; i++)); do
        [[ -c $FAKE_GPU_DIR/gpu$i ]] || mknod "$FAKE_GPU_DIR/gpu$i" c 1 3 ||
            die 1 "cannot create the fake GPU device $FAKE_GPU_DIR/gpu$i (mknod); set LMFT_SLURM_FAKE_GPUS=0"
    done
    gres_node=" Gres=gpu:$FAKE_GPUS"
    gres_types="GresTypes=gpu"
    gres_conf="NodeName=$node Name=gpu File=$FAKE_GPU_DIR/gpu[0-$((FAKE_GPUS - 1))]"
fi

install -d -m 0755 "$CONF_DIR"
install -d -o slurm -g slurm -m 0755 "$LOG_DIR" "$RUN_DIR" "$STATE_DIR"
install -d -m 0755 "$SPOOL_DIR" "$MARK_DIR"

wrote=0
write_if_changed "$CONF_DIR/slurm.conf" 0644 root:root <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: containers (e.g. gVisor) often lack a usable cgroup tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job without --mem would otherwise hold all of the node's memory.
DefMemPerCPU=1024
# Finished jobs stay visible to squeue for 5 minutes; sacct keeps them for good.
MinJobAge=300
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
$gres_types
NodeName=$node NodeAddr=127.0.0.1 $hw$gres_node State=UNKNOWN
PartitionName=cpu Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$node MaxTime=INFINITE State=UP
EOF

write_if_changed "$CONF_DIR/gres.conf" 0644 root:root <<EOF
$MARKER
# Stand-in GPUs (device nodes that are copies of /dev/null): SLURM schedules
# them and sets CUDA_VISIBLE_DEVICES; the jobs run on the CPU.
$gres_conf
EOF

slurm_changed=$wrote

wrote=0
# slurmdbd refuses a config readable by others or not owned by SlurmUser.
write_if_changed "$CONF_DIR/slurmdbd.conf" 0600 slurm:slurm <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
# No password: MariaDB authenticates the slurm OS user over its Unix socket.
StorageUser=slurm
EOF
dbd_changed=$wrote

started=0

# ---------------------------------------------------------------- munge
munge_ok() { munge -n </dev/null | unmunge >/dev/null; }
if ! munge_ok >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    fi
    say "starting munged"
    runuser -u munge -- munged || die 1 "munged failed to start; see /var/log/munge/munged.log"
    touch "$MARK_DIR/munge"
    started=1
    wait_for "$TIMEOUT" "munge is up" munge_ok || die 1 "munge does not answer; see /var/log/munge/munged.log"
fi

# ---------------------------------------------------------------- MariaDB
if ! mariadb-admin --silent ping >/dev/null 2>&1; then
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    install -d -o mysql -g adm -m 2750 /var/log/mysql
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        say "initialising the MariaDB data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null ||
            die 1 "mariadb-install-db failed"
    fi
    say "starting mariadbd"
    # setsid: the server must outlive this script and the caller's process group.
    # The lock wait timeout is the value slurmdbd recommends.
    setsid mariadbd --user=mysql --innodb-lock-wait-timeout=900 \
        --log-error=/var/log/mysql/error.log </dev/null >/dev/null 2>&1 &
    touch "$MARK_DIR/mariadb"
    started=1
    wait_for "$TIMEOUT" "MariaDB is up" mariadb-admin --silent ping ||
        die 1 "MariaDB did not start; see /var/log/mysql/error.log"
fi
mariadb <<'SQL' || die 1 "cannot create the accounting database as MariaDB root (unix_socket login)"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# ---------------------------------------------------------------- slurmdbd
dbd_ok() { sacctmgr -n -P list cluster format=cluster; }
if ((dbd_changed)); then
    stop_pidfile "$RUN_DIR/slurmdbd.pid" slurmdbd
fi
if ! pid_alive "$RUN_DIR/slurmdbd.pid"; then
    say "starting slurmdbd"
    slurmdbd || die 1 "slurmdbd failed to start; see $LOG_DIR/slurmdbd.log"
    started=1
    wait_for "$TIMEOUT" "slurmdbd is up" dbd_ok || die 1 "slurmdbd does not answer sacctmgr; see $LOG_DIR/slurmdbd.log"
fi
if ! dbd_ok 2>/dev/null | grep -qx "$CLUSTER"; then
    say "registering cluster $CLUSTER in the accounting database"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die 1 "sacctmgr add cluster $CLUSTER failed"
fi

# ---------------------------------------------------------------- slurmctld, slurmd
if ((slurm_changed)); then
    stop_pidfile "$RUN_DIR/slurmd.pid" slurmd
    stop_pidfile "$RUN_DIR/slurmctld.pid" slurmctld
fi
if ! pid_alive "$RUN_DIR/slurmctld.pid"; then
    say "starting slurmctld"
    slurmctld || die 1 "slurmctld failed to start; see $LOG_DIR/slurmctld.log"
    started=1
    wait_for "$TIMEOUT" "slurmctld is up" scontrol ping || die 1 "slurmctld does not answer; see $LOG_DIR/slurmctld.log"
fi
if ! pid_alive "$RUN_DIR/slurmd.pid"; then
    say "starting slurmd"
    slurmd || die 1 "slurmd failed to start; see $LOG_DIR/slurmd.log"
    started=1
fi

# ---------------------------------------------------------------- checks
node_up() { sinfo -h -N -n "$node" -o %T | grep -Eqx 'idle|mixed|allocated|completing'; }
if ! wait_for 15 "node $node is up" node_up; then
    # A node drained by an earlier run (e.g. a killed slurmd) does not come back alone.
    scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
    wait_for "$TIMEOUT" "node $node is up" node_up ||
        die 1 "node $node is '$(sinfo -h -N -n "$node" -o '%T: %E' | head -n 1)'; see $LOG_DIR/slurmd.log"
fi
sacct -n -X --starttime now-1hours >/dev/null || die 1 "sacct does not answer; see $LOG_DIR/slurmdbd.log"

if ((started)); then
    say "smoke test: one job through sbatch, waiting for COMPLETED in sacct"
    job=$(sbatch --parsable -p cpu -J lmft-setup-smoke -o /dev/null -t 1 --wrap true) ||
        die 1 "sbatch failed"
    job_done() { sacct -n -X -P -j "$job" -o State | grep -qx COMPLETED; }
    wait_for "$TIMEOUT" "smoke job $job is COMPLETED in sacct" job_done ||
        die 1 "smoke job $job is '$(sacct -n -X -P -j "$job" -o State)' in sacct; see $LOG_DIR/slurmctld.log"
fi

say "ready: cluster $CLUSTER, node $node ($hw$gres_node), partitions cpu (default) and gpu"
