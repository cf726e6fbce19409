#!/usr/bin/env bash
# serve.Dockerfile's plugins stage: compiles our TorchServe endpoint plugins
# (/ping that waits for loaded workers, /execution-parameters) into $1/byoc-endpoints.jar
# against the servingsdk classes inside TorchServe's own model-server.jar.
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=docker/runtime/pip-env.sh
. /opt/byoc/pip-env.sh
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends openjdk-17-jdk-headless unzip >/dev/null
work=$(mktemp -d)
pip download -q --no-deps torchserve==0.12.0 -d "$work"
unzip -q -j "$work"/torchserve-*.whl 'ts/frontend/model-server.jar' -d "$work"
mkdir -p "$work/classes/META-INF" "$out"
javac --release 17 -cp "$work/model-server.jar" -d "$work/classes" "$here"/src/io/pytorchbyoc/serve/*.java
cp -r "$here/META-INF/services" "$work/classes/META-INF/"
jar cf "$out/byoc-endpoints.jar" -C "$work/classes" .
rm -rf "$work"
ls -l "$out"
