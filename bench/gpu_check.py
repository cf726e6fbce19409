"""The checks that need a GPU (bench/gpu_check.sh runs them on a GPU machine; see bench/README.md).

    python bench/gpu_check.py horovod   # under horovodrun: NCCL allreduce + one DistributedOptimizer step
    python bench/gpu_check.py ddp OUT   # the `train` entry on one GPU: torchrun + DDP over NCCL, bf16
    python bench/gpu_check.py serve OUT # the serving handler of a worker with gpu_id=0: model on cuda:0

Each prints what it measured and exits non-zero when a check fails.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def horovod():
    import horovod.torch as hvd

    hvd.init()
    torch.cuda.set_device(hvd.local_rank())
    assert hvd.nccl_built(), "Horovod was built without NCCL"
    x = torch.full((1024,), float(hvd.rank() + 1), device="cuda")
    t0 = time.perf_counter()
    total = hvd.allreduce(x, op=hvd.Sum)
    torch.cuda.synchronize()
    want = hvd.size() * (hvd.size() + 1) / 2
    assert total.is_cuda and torch.allclose(total, torch.full_like(total, want)), total[:4]
    print(f"rank {hvd.rank()}/{hvd.size()}: allreduce on {total.device} = {total[0].item()} "
          f"in {1000 * (time.perf_counter() - t0):.1f} ms")

    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4).cuda()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    before = model.weight.detach().clone()
    loss = model(torch.randn(8, 16, device="cuda")).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    moved = (model.weight - before).abs().max().item()
    assert moved > 0, "the DistributedOptimizer step changed nothing"
    print(f"rank {hvd.rank()}: DistributedOptimizer step, loss {loss.item():.4f}, max weight change {moved:.2e}")


def ddp(out: Path):
    """The built-in trainer on the bundled textures, as SageMaker runs it on one GPU host."""
    root = out / "ml"
    config = root / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    data = root / "input" / "data" / "train"
    if not data.exists():
        shutil.copytree(REPO / "samples" / "textures", data)
    hps = {"arch": "resnet18", "image-size": "64", "epochs": "3", "batch-size": "16", "lr": "0.05",
           "val-fraction": "0.2", "seed": "0", "sagemaker_torch_distributed_enabled": "true"}
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {"TrainingInputMode": "File"}}))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    env = {**os.environ, "BYOC_ML_ROOT": str(root), "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}",
           "NCCL_DEBUG": "INFO"}
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "train"], env=env, capture_output=True, text=True, timeout=900)
    log = run.stdout + run.stderr
    (out / "ddp.log").write_text(log)
    print(f"train exit {run.returncode} in {time.monotonic() - t0:.0f} s; log in {out / 'ddp.log'}")
    assert run.returncode == 0, log[-3000:]
    assert "torchrun" in log, "the launcher was not torchrun"
    assert "NCCL INFO" in log, "no NCCL communicator was made (NCCL_DEBUG=INFO printed nothing)"
    assert (root / "model" / "model.pt").exists(), "no model exported"
    for line in log.splitlines():
        if any(k in line for k in ("nccl", "NCCL version", "device", "bf16", "img/s", "accuracy")):
            print("  " + line[:200])


def serve(out: Path):
    """One worker's handler with gpu_id=0, as the python engine starts it on a GPU host."""
    from byoc import artifact
    from serve.handler import HandlerService, Request
    from serve.worker import WorkerContext

    model_dir = out / "model"
    spec = artifact.model_spec(arch="resnet18", library="torchvision", classes=["brick", "grass", "gravel"],
                               image_size=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    artifact.write(artifact.build_model(spec).eval(), spec, model_dir)
    service = HandlerService()
    service.initialize(WorkerContext(str(model_dir), "model", 0, 1))
    devices = {str(p.device) for p in service.model.parameters()} if hasattr(service.model, "parameters") else set()
    photo = next((REPO / "samples" / "photos").glob("*.jpg"))
    t0 = time.perf_counter()
    request = Request(idx=0, body=photo.read_bytes(), content_type="image/jpeg", accept="application/json")
    service.run([request])
    answer = json.loads(request.output if request.ok else request.error.body())
    print(f"handler: model on {sorted(devices) or type(service.model).__name__}, current device "
          f"{torch.cuda.current_device()}, answered {answer} in {1000 * (time.perf_counter() - t0):.0f} ms")
    assert torch.cuda.current_device() == 0 and devices == {"cuda:0"}, devices
    assert "predictions" in answer, answer


if __name__ == "__main__":
    assert torch.cuda.is_available(), "no GPU visible to torch"
    print(f"torch {torch.__version__} cuda {torch.version.cuda} on {torch.cuda.get_device_name(0)}")
    what = sys.argv[1]
    if what == "horovod":
        horovod()
    else:
        target = Path(sys.argv[2])
        target.mkdir(parents=True, exist_ok=True)
        {"ddp": ddp, "serve": serve}[what](target)
