#!/usr/bin/env bash
# Patches an unpacked Horovod 0.28.1 source tree ($1) to build against torch 2.14
# and CMake 4: Horovod's last release predates torch's C++20 headers and CMake
# 4's removal of pre-3.5 policies. Raises the C++ standard (17 for Horovod's
# core, 20 where it includes torch); the caller exports
# CMAKE_POLICY_VERSION_MINIMUM=3.5. Used by build-wheels.sh and bench/gpu_check.sh.
set -euo pipefail
hvd=$1
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$hvd/CMakeLists.txt"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 20)/' "$hvd/horovod/torch/CMakeLists.txt"
