#!/usr/bin/env bash
# The GPU checks of README's "What only a GPU machine can verify", prepared for a
# session that is lent a GPU machine (no network there; Python, torch, nvcc, CMake
# and a C++ compiler are; no docker, no MPI). Not run yet: see bench/README.md.
#
#   bench/gpu_check.sh prepare     here, with PyPI reachable: Horovod's source and the
#                                  pure-Python wheels that machine lacks, into .gpu-check/
#                                  (git-ignored through .git/info/exclude)
#   bench/gpu_check.sh run [OUT]   there, from the repo root (carry .gpu-check):
#     1. builds Horovod 0.28.1 (patched as in the image) with NCCL against the NCCL of
#        that machine's torch, Gloo as the controller;
#     2. horovodrun: one NCCL allreduce and one hvd.DistributedOptimizer step on the GPU;
#     3. the `train` entry on the bundled textures: torchrun + DDP over NCCL;
#     4. the serving handler as a worker with gpu_id=0 answers a photo.
#   Figures and logs go to OUT (default $OUT, else /tmp/gpu-check).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHECK=$ROOT/.gpu-check
# shellcheck source=docker/train/versions.env
. "$ROOT/docker/train/versions.env"

prepare() {
  local exclude; exclude=$(git -C "$ROOT" rev-parse --path-format=absolute --git-path info/exclude)
  mkdir -p "$CHECK/wheels" "$(dirname "$exclude")"
  grep -qx '/.gpu-check/' "$exclude" 2>/dev/null || echo '/.gpu-check/' >>"$exclude"
  python3 -m pip download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$CHECK"
  python3 -m pip wheel -q --no-deps -w "$CHECK/wheels" \
    torchserve==0.12.0 sagemaker-inference==1.10.1
  du -sh "$CHECK"
}

run() {
  local out=${1:-${OUT:-/tmp/gpu-check}} site=/tmp/gpu-check-site src nccl cuda_home
  mkdir -p "$out"
  export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT:$site
  nvidia-smi -L | tee "$out/gpus.txt"
  python3 -m pip install -q --no-index --no-deps --target "$site" "$CHECK"/wheels/*.whl

  # 1. Horovod with NCCL. The nvidia-nccl wheel has only libnccl.so.2: the link
  #    CMake looks for goes into a folder of ours, not into that machine's venv.
  src=$(mktemp -d)
  tar -xzf "$CHECK"/horovod-*.tar.gz -C "$src"
  bash "$ROOT/docker/train/patch-horovod.sh" "$src/horovod-$HOROVOD_VERSION"
  nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__path__[0] + "/"))')
  mkdir -p "$src/nccl/lib" && ln -sf "$nccl/lib/libnccl.so.2" "$src/nccl/lib/libnccl.so"
  cuda_home=$(dirname "$(dirname "$(command -v nvcc)")")
  local t0=$SECONDS
  CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 \
    HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED HOROVOD_NCCL_INCLUDE="$nccl/include" \
    HOROVOD_NCCL_LIB="$src/nccl/lib" HOROVOD_CUDA_HOME="$cuda_home" CUDA_HOME="$cuda_home" \
    HOROVOD_BUILD_CUDA_CC_LIST="$HOROVOD_CUDA_CC_LIST" \
    python3 -m pip wheel -q --no-build-isolation --no-deps -w "$src/dist" "$src/horovod-$HOROVOD_VERSION" \
    >"$out/horovod-build.log" 2>&1 || { tail -n 40 "$out/horovod-build.log"; exit 1; }
  echo "horovod wheel built in $((SECONDS - t0)) s: $(ls "$src"/dist)" | tee "$out/summary.txt"
  python3 -m pip install -q --no-index --no-deps --target "$site" "$src"/dist/horovod-*.whl

  # 2. NCCL allreduce + DistributedOptimizer step, one rank per GPU
  local gpus; gpus=$(nvidia-smi -L | wc -l)
  NCCL_DEBUG=INFO "$site/bin/horovodrun" --gloo -np "$gpus" -H "localhost:$gpus" \
    python3 "$ROOT/bench/gpu_check.py" horovod 2>&1 | tee "$out/horovod.log"
  grep -q "NCCL INFO" "$out/horovod.log" || { echo "no NCCL communicator in the Horovod run" >&2; exit 1; }
  # 3. DDP over NCCL through the trainer; 4. the serving handler on gpu_id 0
  python3 "$ROOT/bench/gpu_check.py" ddp "$out" | tee -a "$out/summary.txt"
  python3 "$ROOT/bench/gpu_check.py" serve "$out" | tee -a "$out/summary.txt"
  echo "gpu_check: all passed" | tee -a "$out/summary.txt"
}

case ${1:-} in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
