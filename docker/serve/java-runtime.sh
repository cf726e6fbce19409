#!/usr/bin/env bash
# serve.Dockerfile's java stage: the Java runtime that the torchserve engine's frontend
# (TorchServe 0.12, BYOC_SERVING_ENGINE=torchserve) runs on, linked into $1 from a JDK
# that stays in that stage. The default python engine needs no Java.
set -euo pipefail
jre=$1
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# jlink needs the JDK's jmods (Debian ships them in the JDK package, Ubuntu
# -- the nvidia/cuda bases -- in openjdk-17-jmods) and objcopy (binutils) to strip.
jmods=(); if apt-cache show openjdk-17-jmods >/dev/null 2>&1; then jmods=(openjdk-17-jmods); fi
apt-get install -y -qq --no-install-recommends openjdk-17-jdk-headless "${jmods[@]}" binutils >/dev/null
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
