#!/usr/bin/env bash
# serve.Dockerfile: Java 17 for TorchServe's frontend, the pinned Python
# packages, and the unprivileged user the server runs as.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=docker/runtime/pip-env.sh
. /opt/byoc/pip-env.sh

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# ca-certificates-java is a dependency; man pages and X11 bits are not needed.
apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null
rm -rf /var/lib/apt/lists/*

pip install -q -r "$here/requirements.txt"
pip install -q --no-deps sagemaker-inference==1.10.1

useradd --create-home --uid 1000 --shell /usr/sbin/nologin model-server
install -d -o model-server -g model-server /home/model-server/tmp /opt/ml/model
java -version 2>&1 | head -n1
