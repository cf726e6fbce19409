#!/usr/bin/env bash
# Installs the runtime shared by the train and serve images: Python in a venv
# at /opt/venv, torch and torchvision. Both Dockerfiles run this script with the
# same inputs as their first step, so BuildKit gives both images the same
# layers (stored and pulled once).
#
# Build secrets (optional, never written into a layer):
#   /run/secrets/ca       CA bundle for pip (corporate proxy, TLS interception)
#   /run/secrets/pipconf  a pip.conf (index URL, trusted host) from the builder's host
# Build args: TORCH_INDEX_URL  an extra wheel index for torch (e.g. a CPU-only one).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# g++ and the Python headers: torch.compile's inductor compiles C++ kernels on the CPU (and
# triton its launchers on a GPU) when a model first runs; without them a user's compiled model
# fails at its first request (AWS's test_mnist_inductor). About 360 MB (README, Images).
apt-get install -y -qq --no-install-recommends \
  python3 python3-venv python3-dev g++ ca-certificates tini >/dev/null
rm -rf /var/lib/apt/lists/*

python3 -m venv /opt/venv
install -D -m 0644 "$here/pip-env.sh" /opt/byoc/pip-env.sh
# shellcheck source=/dev/null
. /opt/byoc/pip-env.sh
/opt/venv/bin/pip install -q --upgrade pip==25.3
extra=()
if [ -n "${TORCH_INDEX_URL:-}" ]; then extra=(--extra-index-url "$TORCH_INDEX_URL"); fi
/opt/venv/bin/pip install -q "${extra[@]}" -r "$here/requirements.txt"
/opt/venv/bin/python -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.version.cuda)'
