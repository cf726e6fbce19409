#!/usr/bin/env bash
# serve.Dockerfile's plugins stage: compiles our TorchServe endpoint plugins
# (/ping that waits for loaded workers, /execution-parameters) into $1/byoc-endpoints.jar
# against the servingsdk classes inside TorchServe's own model-server.jar, and links
# the Java runtime that TorchServe's frontend runs on into $2.
set -euo pipefail
out=$1
jre=$2
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=docker/runtime/pip-env.sh
. /opt/byoc/pip-env.sh
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# jlink needs the JDK's jmods (Debian ships them in the JDK package, Ubuntu
# -- the nvidia/cuda bases -- in openjdk-17-jmods) and objcopy (binutils) to strip.
jmods=(); if apt-cache show openjdk-17-jmods >/dev/null 2>&1; then jmods=(openjdk-17-jmods); fi
apt-get install -y -qq --no-install-recommends openjdk-17-jdk-headless "${jmods[@]}" binutils unzip >/dev/null
work=$(mktemp -d)
pip download -q --no-deps torchserve==0.12.0 -d "$work"
unzip -q -j "$work"/torchserve-*.whl 'ts/frontend/model-server.jar' -d "$work"
mkdir -p "$work/classes/META-INF" "$out"
javac --release 17 -cp "$work/model-server.jar" -d "$work/classes" "$here"/src/io/pytorchbyoc/serve/*.java
cp -r "$here/META-INF/services" "$work/classes/META-INF/"
jar cf "$out/byoc-endpoints.jar" -C "$work/classes" .
rm -rf "$work"
ls -l "$out"

# The serving image's Java: every module of the JDK but the compilers, debuggers
# and development tools (javac, the Graal JIT, jshell, javadoc, jlink, jdb, jconsole,
# the incubators), without header files, man pages or debug symbols. 63 MB where
# Debian's JRE package takes 190 (it carries all of them).
java_home=$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")
drop=(java.compiler java.se jdk.compiler jdk.internal.vm.compiler jdk.internal.vm.compiler.management
      jdk.internal.vm.ci jdk.jshell jdk.editpad jdk.internal.ed jdk.internal.le jdk.internal.opt
      jdk.javadoc jdk.jartool jdk.jdeps jdk.jlink jdk.jpackage jdk.jdi jdk.jdwp.agent jdk.hotspot.agent
      jdk.jconsole jdk.jstatd jdk.jcmd jdk.attach jdk.internal.jvmstat jdk.incubator.foreign
      jdk.incubator.vector)
keep=$("$java_home/bin/java" --list-modules | sed 's/@.*//' | grep -vxF -f <(printf '%s\n' "${drop[@]}") | paste -sd,)
"$java_home/bin/jlink" --add-modules "$keep" --strip-debug --no-man-pages --no-header-files \
  --compress=2 --output "$jre"
"$jre/bin/java" -version
du -sh "$jre"
