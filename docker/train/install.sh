#!/usr/bin/env bash
# Final stage of train.Dockerfile: OpenMPI + OpenSSH for multi-host jobs, the
# wheels built in the devel stage ($1), and the pinned Python packages.
set -euo pipefail
wheels=$1
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=docker/runtime/pip-env.sh
. /opt/byoc/pip-env.sh

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  openmpi-bin libopenmpi3 openssh-server openssh-client libgomp1 procps >/dev/null
rm -rf /var/lib/apt/lists/*

# sshd for mpirun between the job's hosts. No host or user key is baked in:
# host keys are made per container at start (ssh-keygen -A) and the job's
# user key is exchanged at start (train/launch.py). Root login by key only.
rm -f /etc/ssh/ssh_host_*
mkdir -p /run/sshd /root/.ssh && chmod 700 /root/.ssh
cat >/etc/ssh/sshd_config.d/byoc.conf <<'CONF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
CONF
cat >/etc/ssh/ssh_config.d/byoc.conf <<'CONF'
Host algo-*
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
CONF

pip install -q --no-deps "$wheels"/*.whl
pip install -q -r "$here/requirements.txt"
python -c 'import torch, horovod.torch, sagemaker_training; print("horovod", horovod.__version__)'
