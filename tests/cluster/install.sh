#!/usr/bin/env bash
# What `make test-cluster` needs: SLURM's daemons and commands, and munge. Installed with
# apt when missing and this runs as root on Debian/Ubuntu; otherwise one line saying what
# to install, and a non-zero exit.
set -euo pipefail
need=()
for cmd in munged mungekey slurmctld slurmd sbatch scontrol sinfo scancel; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "make test-cluster: missing ${need[*]}: install Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) and run it as root" >&2
  exit 1
fi
echo "make test-cluster: installing slurm-wlm and munge (missing: ${need[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
