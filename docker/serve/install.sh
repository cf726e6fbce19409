#!/usr/bin/env bash
# serve.Dockerfile: the pinned Python packages and the unprivileged user the
# server runs as. Java 17 for the torchserve engine comes from the java stage
# (a runtime linked without the compiler and tools, in /opt/java).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=docker/runtime/pip-env.sh
. /opt/byoc/pip-env.sh

pip install -q -r "$here/requirements.txt"
pip install -q --no-deps sagemaker-inference==1.10.1

useradd --create-home --uid 1000 --shell /usr/sbin/nologin model-server
install -d -o model-server -g model-server /home/model-server/tmp /opt/ml/model
java -version 2>&1 | head -n1
