#!/usr/bin/env bash
# Installs the AWS PyTorch inference DLC's serving stack (bench/aws_reference/Dockerfile).
# Versions: sagemaker-pytorch-inference 2.0.25 with TorchServe 0.12, as AWS ships them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  python3 python3-venv ca-certificates openjdk-17-jre-headless >/dev/null
rm -rf /var/lib/apt/lists/*

# On a bare base: the same venv and torch pins as our runtime stage.
if [ ! -x /opt/venv/bin/python ]; then
  python3 -m venv /opt/venv
  /opt/venv/bin/pip install -q --upgrade pip==25.3
  /opt/venv/bin/pip install -q -r /tmp/runtime-requirements.txt
fi
# With its declared dependencies, as the DLC installs it, plus what it needs to run
# at all and declares nowhere: PyYAML (TorchServe's worker imports it; without it
# the workers crash-loop) and setuptools < 81 (the toolkit imports pkg_resources,
# which a fresh Python 3.11+ venv no longer has).
/opt/venv/bin/pip install -q sagemaker-pytorch-inference==2.0.25 torchserve==0.12.0 \
  torch-model-archiver==0.12.0 pyyaml==6.0.3 setuptools==75.8.0
install -m 0755 "$here/dockerd-entrypoint.py" /usr/local/bin/dockerd-entrypoint.py
useradd --create-home --uid 1000 --shell /usr/sbin/nologin model-server
install -d -o model-server -g model-server /home/model-server/tmp
/opt/venv/bin/python -c 'import torch, sagemaker_pytorch_serving_container; print("torch", torch.__version__)'
java -version 2>&1 | head -n1
