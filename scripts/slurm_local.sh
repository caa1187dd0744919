#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, from Debian's packages, for trying (and
# testing) bnstudy's cluster path: slurmctld, slurmd, munged, and slurmdbd with MariaDB so that
# sacct answers (submitit asks it for job states). Needs root; no systemd: the daemons are
# started directly and stopped by pid.
#
#   bash scripts/slurm_local.sh up       # install what is missing, start the cluster
#   export SLURM_CONF=/tmp/bnstudy-slurm/slurm.conf   # (printed by `up`) for sbatch, squeue, …
#   bash scripts/slurm_local.sh status   # sinfo and the daemons' pids
#   bash scripts/slurm_local.sh down     # stop every daemon it started
#
# Everything it writes lives in $BNSTUDY_SLURM_DIR (default /tmp/bnstudy-slurm): slurm.conf,
# state, logs, the database. Nothing under /etc is touched but munge's key, which Debian's
# package creates. The cluster: one node (this machine's CPUs and memory), partition `cpu`,
# account `bnstudy`, KillWait=5 s, and JobRequeue=0 as on sites where a job is requeued only
# when it asked for --requeue (bnstudy's presets do).
set -euo pipefail

DIR=${BNSTUDY_SLURM_DIR:-/tmp/bnstudy-slurm}
CLUSTER=bnstudy
ACCOUNT=bnstudy
PARTITION=cpu
DB_PORT=${BNSTUDY_SLURM_DB_PORT:-3307}
export SLURM_CONF=$DIR/slurm.conf

die() { echo "slurm_local: error: $*" >&2; exit 1; }

install_packages() {
  local missing=()
  for tool in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge \
              slurmdbd:slurmdbd mariadbd:mariadb-server; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    || die "missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]}) as root"
  echo "slurm_local: installing ${missing[*]}"
  apt-get update -qq
  # policy-rc.d: the packages' own service starts would fail without systemd; we start them.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up within ${seconds} s; see the logs in $DIR/log"
}

write_configs() {
  local node cpus mem_mb
  node=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$DIR"/{state,spool,log,run}
  cat > "$DIR/slurm.conf" <<EOF
# Written by bnstudy's scripts/slurm_local.sh: a single-node cluster on $node.
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# Without systemd or cgroups in a container: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2000
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
# A job killed (scancel, requeue, time limit) gets SIGTERM, then SIGKILL after this many s.
KillWait=5
# Requeue only jobs that ask for it (sbatch --requeue), as many sites are set up.
JobRequeue=0
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
# A partition whose time limit (1 min) a job can ask past: it then pends forever
# (PartitionTimeLimit), as on a real site without EnforcePartLimits.
PartitionName=short Nodes=$node MaxTime=1 State=UP
EOF
  cat > "$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/slurmdbd.conf"  # slurmdbd refuses a config others can read
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  [ -f /etc/munge/munge.key ] || die "no /etc/munge/munge.key; install Debian's munge package"
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- munged
  else
    munged --force
  fi
  wait_for 10 munged munge -n
}

start_database() {
  if pid_alive "$DIR/run/mariadb.pid"; then return; fi
  if [ ! -d "$DIR/mysql/mysql" ]; then
    mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=normal \
      >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $DIR/log"
  fi
  mariadbd --user=root --datadir="$DIR/mysql" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --socket="$DIR/run/mariadb.sock" --pid-file="$DIR/run/mariadb.pid" \
    --log-error="$DIR/log/mariadb.log" --skip-grant-tables=0 >/dev/null 2>&1 &
  wait_for 30 MariaDB mariadb --socket="$DIR/run/mariadb.sock" -uroot -e "select 1"
}

start_slurm() {
  if ! pid_alive "$DIR/run/slurmdbd.pid"; then
    slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
    wait_for 30 slurmdbd sacctmgr -n list cluster
  fi
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
  if ! pid_alive "$DIR/run/slurmctld.pid"; then
    slurmctld -f "$SLURM_CONF"
    wait_for 30 slurmctld scontrol ping
  fi
  sacctmgr -i -Q add account "$ACCOUNT" cluster="$CLUSTER" >/dev/null 2>&1 || true
  sacctmgr -i -Q add user "$(id -un)" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null 2>&1 || true
  if ! pid_alive "$DIR/run/slurmd.pid"; then
    slurmd -f "$SLURM_CONF"
  fi
  wait_for 60 "the node" bash -c "sinfo -h -o %t | grep -qx idle"
}

stop_pidfile() {  # stop_pidfile FILE: SIGTERM, then SIGKILL after 10 s
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

case "${1:-}" in
  up)
    [ "$(id -u)" = 0 ] || die "run as root: the daemons and the node's jobs need it"
    install_packages
    write_configs
    start_munge
    start_database
    start_slurm
    echo "slurm_local: cluster '$CLUSTER' is up: partition $PARTITION, account $ACCOUNT," \
         "$(nproc) CPUs ($(slurmctld -V))"
    echo "export SLURM_CONF=$SLURM_CONF"
    ;;
  down)
    # Jobs first, so that none is left running under a dead slurmd.
    if pid_alive "$DIR/run/slurmctld.pid"; then scancel --full -u "$(id -un)" 2>/dev/null || true; fi
    for daemon in slurmd slurmctld slurmdbd mariadb; do stop_pidfile "$DIR/run/$daemon.pid"; done
    echo "slurm_local: stopped (munged keeps running; its state is in $DIR)"
    ;;
  status)
    for daemon in mariadb slurmdbd slurmctld slurmd; do
      if pid_alive "$DIR/run/$daemon.pid"; then
        echo "$daemon: pid $(cat "$DIR/run/$daemon.pid")"
      else
        echo "$daemon: not running"
      fi
    done
    sinfo 2>/dev/null || true
    ;;
  *)
    echo "usage: bash scripts/slurm_local.sh up|down|status" >&2
    exit 2
    ;;
esac
