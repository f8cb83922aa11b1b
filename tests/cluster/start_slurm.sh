#!/usr/bin/env bash
# A one-node SLURM on localhost for tests/cluster (Debian's slurm-wlm + munge; root). Idempotent: installs the
# packages when missing, writes /etc/slurm/slurm.conf, starts munged, slurmctld and slurmd unless running, and
# waits until the node is idle. Exit 0 when `sinfo` shows the node ready; 3 when the packages cannot be installed
# (the tests then skip and say so); 1 on any other failure (the tests fail and show this script's output).
# Works without systemd or cgroups: proctrack/linuxproc, task/none, no accounting (see docs/clusters.md).
set -uo pipefail
HOST=$(hostname -s)
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurm-wlm munge; } \
      >/tmp/segformer-slurm-install.log 2>&1; then
    echo "cannot install slurm-wlm and munge (see /tmp/segformer-slurm-install.log)" >&2
    exit 3
  fi
fi
if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  exit 0  # already up
fi
set -e
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=segformer-test
SlurmctldHost=${HOST}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then exit 0; fi
  state=$(sinfo -h -o %T 2>/dev/null || true)
  case "$state" in down*|drain*) scontrol update nodename="${HOST}" state=resume 2>/dev/null || true ;; esac
  sleep 1
done
echo "SLURM did not come up; node state: $(sinfo -h -o '%T %E' 2>&1)" >&2
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
