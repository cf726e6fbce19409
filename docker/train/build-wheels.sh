#!/usr/bin/env bash
# devel stage of train.Dockerfile: builds the wheels that need a compiler,
# into $1. Only the wheels go on to the training image.
#   FLAVOR=gpu|cpu  gpu adds nvcc (from the CUDA apt repository that the
#                   nvidia/cuda base images carry) and builds Horovod with NCCL
#   WITH_APEX=1     gpu only: also builds NVIDIA apex (needs GitHub access)
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
FLAVOR=${FLAVOR:-gpu}
# shellcheck source=docker/runtime/pip-env.sh
. /opt/byoc/pip-env.sh
# shellcheck source=docker/train/versions.env
. "$here/versions.env"
mkdir -p "$out"

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  build-essential cmake python3-dev libopenmpi-dev openmpi-bin git >/dev/null
if [ "$FLAVOR" = gpu ]; then
  cuda=$(python -c 'import torch; print(torch.version.cuda.replace(".", "-"))')
  apt-get install -y -qq --no-install-recommends "cuda-nvcc-$cuda" "cuda-cudart-dev-$cuda" >/dev/null
fi
pip install -q "setuptools==$SETUPTOOLS_VERSION" "wheel==$WHEEL_VERSION" "packaging==$PACKAGING_VERSION"

# sagemaker-training ships a small C extension (gethostname), hence built here.
pip wheel -q --no-deps -w "$out" "sagemaker-training==$SAGEMAKER_TRAINING_VERSION"

# Horovod 0.28.1 (its last release) predates torch 2.14's C++20 headers and
# CMake 4's removal of pre-3.5 policies: raise the C++ standard (17 for
# Horovod's core, 20 where it includes torch) and set the policy floor. Its bundled gloo gives the CPU collectives; MPI comes from
# OpenMPI; NCCL (gpu) from the nvidia-nccl wheel that torch already installed.
src=$(mktemp -d)
pip download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$src"
tar -xzf "$src"/horovod-*.tar.gz -C "$src"
hvd="$src/horovod-$HOROVOD_VERSION"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$hvd/CMakeLists.txt"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 20)/' "$hvd/horovod/torch/CMakeLists.txt"
jobs=$(nproc)
export CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$jobs" \
  HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 \
  HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
if [ "$FLAVOR" = gpu ]; then
  nccl=$(python -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__path__[0] + "/"))')
  ln -sf libnccl.so.2 "$nccl/lib/libnccl.so"   # the wheel has only the SONAME
  export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED \
    HOROVOD_NCCL_INCLUDE="$nccl/include" HOROVOD_NCCL_LIB="$nccl/lib" \
    HOROVOD_CUDA_HOME=/usr/local/cuda HOROVOD_BUILD_CUDA_CC_LIST="$HOROVOD_CUDA_CC_LIST"
fi
pip wheel --no-build-isolation --no-deps -v -w "$out" "$hvd" >"$src/build.log" 2>&1 || {
  grep -E -m 40 'error|Error' "$src/build.log" >&2; tail -n 20 "$src/build.log" >&2; exit 1; }
rm -rf "$src"

if [ "${WITH_APEX:-0}" = 1 ]; then
  if [ "$FLAVOR" != gpu ]; then echo "WITH_APEX=1 needs FLAVOR=gpu (apex's fused kernels are CUDA)" >&2; exit 1; fi
  APEX_CPP_EXT=1 APEX_CUDA_EXT=1 TORCH_CUDA_ARCH_LIST="$APEX_CUDA_ARCH_LIST" \
    pip wheel --no-build-isolation --no-deps -w "$out" "git+https://github.com/NVIDIA/apex@$APEX_COMMIT"
fi
ls -l "$out"
