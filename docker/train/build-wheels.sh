#!/usr/bin/env bash
# devel stage of train.Dockerfile: builds the wheels that need a compiler,
# into $1. Only the wheels go on to the training image.
#   FLAVOR=gpu|cpu  gpu adds nvcc and the CUDA headers from PyPI's CUDA wheels
#                   (any base image: no CUDA apt repository) and builds Horovod
#                   with NCCL
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
pip install -q "setuptools==$SETUPTOOLS_VERSION" "wheel==$WHEEL_VERSION" "packaging==$PACKAGING_VERSION"
if [ "$FLAVOR" = gpu ]; then
  # nvcc (+ its crt headers and cicc) and CCCL from the cuda-toolkit version
  # that torch pins, so they match its CUDA runtime exactly. They land in this
  # stage's venv only; the training image installs just the built wheels.
  toolkit=$(python -c 'from importlib.metadata import version; print(version("cuda-toolkit"))')
  pip install -q "cuda-toolkit[nvcc,cccl,cudart]==$toolkit"
  major=$(python -c 'import torch; print(torch.version.cuda.split(".")[0])')
  cuda_home=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu$major
  # The wheels lay CUDA out flat (bin/ include/ lib/); nvcc.profile looks
  # under targets/<arch>-linux/, and CMake wants an unversioned libcudart.so.
  case $(uname -m) in aarch64) target=sbsa-linux ;; *) target=$(uname -m)-linux ;; esac
  mkdir -p "$cuda_home/targets" && ln -sfn .. "$cuda_home/targets/$target"
  ln -sf "libcudart.so.$major" "$cuda_home/lib/libcudart.so"
  export CUDA_HOME=$cuda_home   # torch.utils.cpp_extension, asked by Horovod's CMake
fi

# sagemaker-training ships a small C extension (gethostname), hence built here.
pip wheel -q --no-deps -w "$out" "sagemaker-training==$SAGEMAKER_TRAINING_VERSION"

# Horovod 0.28.1 (its last release), patched to build against torch 2.14 and
# CMake 4 (patch-horovod.sh). Its bundled gloo gives the CPU collectives; MPI
# comes from OpenMPI; NCCL (gpu) from the nvidia-nccl wheel that torch already
# installed.
src=$(mktemp -d)
pip download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$src"
tar -xzf "$src"/horovod-*.tar.gz -C "$src"
hvd="$src/horovod-$HOROVOD_VERSION"
bash "$here/patch-horovod.sh" "$hvd"
jobs=$(nproc)
export CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$jobs" \
  HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 \
  HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
if [ "$FLAVOR" = gpu ]; then
  nccl=$(python -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__path__[0] + "/"))')
  ln -sf libnccl.so.2 "$nccl/lib/libnccl.so"   # the wheel has only the SONAME
  export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED \
    HOROVOD_NCCL_INCLUDE="$nccl/include" HOROVOD_NCCL_LIB="$nccl/lib" \
    HOROVOD_CUDA_HOME="$cuda_home" HOROVOD_BUILD_CUDA_CC_LIST="$HOROVOD_CUDA_CC_LIST"
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
