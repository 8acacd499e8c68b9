#!/usr/bin/env bash
# Stop what start_slurm.sh started in DIR.
dir=$(realpath "$1")
for f in slurmd.daemon slurmctld.daemon; do
  [ -f "$dir/$f" ] && kill "$(cat "$dir/$f")" 2>/dev/null
done
[ -f "$dir/munge-run/munged.pid" ] && kill "$(cat "$dir/munge-run/munged.pid")" 2>/dev/null
sleep 1
exit 0
