#!/usr/bin/env bash
# Start a throwaway SLURM (controller + one node with 4 fake GPUs) for the tests.
# The GPUs are of GRES type "fake" and the node has the feature "fakegpu", so that a job
# asking for a GPU model and a node feature (profiles/slurm: gpu_model, constraint) runs;
# finished jobs stay in slurmctld's records for an hour (MinJobAge), for the test to read.
# Usage: start_slurm.sh DIR   -- writes DIR/slurm.conf; export SLURM_CONF=DIR/slurm.conf to use it.
# Needs root and the Debian packages slurmctld slurmd slurm-client munge (installed if missing).
# Nothing is left in /etc: configuration, keys, state and logs all live in DIR.
set -euo pipefail
dir=$(realpath "$1")
mkdir -p "$dir"/{state,spool,log,munge,munge-run}
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi
chown munge: "$dir/munge" "$dir/munge-run"
chmod 755 "$dir" "$dir/munge-run"
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chown munge: "$dir/munge/munge.key" && chmod 400 "$dir/munge/munge.key"
chmod 700 "$dir/munge"
runuser -u munge -- munged --key-file="$dir/munge/munge.key" --socket="$dir/munge-run/munge.socket" \
  --pid-file="$dir/munge-run/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed"
for i in 0 1 2 3; do [ -e "$dir/nvidia$i" ] || mknod "$dir/nvidia$i" c 1 3; done
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=virnucprotest
SlurmctldHost=localhost
AuthType=auth/munge
AuthInfo=socket=$dir/munge-run/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmUser=root
ReturnToService=2
SchedulerParameters=sched_interval=1
MinJobAge=3600
NodeName=localhost CPUs=$cpus RealMemory=$mem Gres=gpu:fake:4 Feature=fakegpu State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat > "$dir/gres.conf" <<CONF
$(for i in 0 1 2 3; do echo "Name=gpu Type=fake File=$dir/nvidia$i"; done)
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -D -f "$SLURM_CONF" > "$dir/log/slurmctld.out" 2>&1 &
echo $! > "$dir/slurmctld.daemon"
slurmd -D -N localhost -f "$SLURM_CONF" > "$dir/log/slurmd.out" 2>&1 &
echo $! > "$dir/slurmd.daemon"
for _ in $(seq 60); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then exit 0; fi
  scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "SLURM did not come up; see $dir/log" >&2
exit 1
