#!/usr/bin/env bash
# Stop the test SLURM cluster that setup_slurm.sh started: slurmd, slurmctld,
# slurmdbd, and MariaDB and munged only if setup_slurm.sh started them (it
# leaves a mark in /run/lmft-slurm). Configuration, the accounting database
# and job state stay, so the next setup_slurm.sh starts in seconds.
# Safe to run when nothing is running. Exit status 0, or 2 when not root.
set -uo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
RUN_DIR=/run/slurm
MARK_DIR=/run/lmft-slurm

say() { echo "teardown_slurm: $*"; }

[[ $(id -u) -eq 0 ]] || {
    echo "teardown_slurm: ERROR: must run as root" >&2
    exit 2
}

# stop PIDFILE NAME: TERM the process in PIDFILE, wait up to 30 s, then KILL.
stop() {
    local file=$1 name=$2 pid
    [[ -s $file ]] || return 0
    pid=$(cat "$file")
    kill -0 "$pid" 2>/dev/null || return 0
    say "stopping $name (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    say "$name (pid $pid) ignored TERM for 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null
}

stop "$RUN_DIR/slurmd.pid" slurmd
stop "$RUN_DIR/slurmctld.pid" slurmctld
stop "$RUN_DIR/slurmdbd.pid" slurmdbd
if [[ -e $MARK_DIR/mariadb ]]; then
    stop /run/mysqld/mysqld.pid mariadbd
    rm -f "$MARK_DIR/mariadb"
fi
if [[ -e $MARK_DIR/munge ]]; then
    stop /run/munge/munged.pid munged
    rm -f "$MARK_DIR/munge"
fi
say "stopped"
