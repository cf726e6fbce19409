"""The default image handler against the network alone (issue 10), through `HandlerService.run`
as TorchServe calls it, in one process, no docker:

    python3 bench/gpu_serve.py                       # a GPU: ResNet-50 at 224 px, batches 1/8/32/64
    python3 bench/gpu_serve.py --device cpu --arch resnet18 --image-size 64 --batches 1 4 \\
        --seconds 0.5                                  # smoke run (tests/unit/test_gpu_bench.py)

Model: the trainer's export of a randomly initialised network (model.pt, model.json and the
code/inference.py shim, as `train` writes them), 1000 classes. Requests: JPEGs of real photos at
500x375 (quality 90). Two handler configurations, each a fresh HandlerService:

  cpu decode   BYOC_GPU_DECODE=off BYOC_SERVE_AMP=off: the handler as before issue 10 (Pillow decode,
               resize and crop per request, fp32 forward)
  gpu decode   the defaults (auto): nvjpeg batch decode, resize/crop on the device, bf16 autocast

The network alone: the same model on a normalised batch already on the device, fp32 and autocast.
Prints a table: img/s and the share of the network alone at the same precision.
"""
import argparse
import glob
import importlib.util
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class Context:
    """What HandlerService uses of TorchServe's Context (ts is not needed to run this)."""

    def __init__(self, model_dir: str, n: int, gpu_id):
        self.system_properties = {"model_dir": model_dir, "gpu_id": gpu_id}
        self.n, self.statuses = n, {}

    def get_all_request_header(self, idx):
        return {"Content-Type": "image/jpeg", "Accept": "application/json"}

    def set_response_content_type(self, idx, value):
        pass

    def set_response_status(self, code, phrase, idx=0):
        self.statuses[idx] = code


def photos(n: int) -> list[bytes]:
    from PIL import Image

    found = []
    for pkg, pattern in [("foolbox", "data/imagenet_*.jpg"), ("sklearn", "datasets/images/*.jpg")]:
        spec = importlib.util.find_spec(pkg)
        if spec and spec.origin:
            found += sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), pattern)))
    found += sorted(glob.glob(os.path.join(ROOT, "samples", "photos", "*.jpg")))
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.open(found[i % len(found)]).convert("RGB").resize((500, 375), Image.BICUBIC).save(buf, "JPEG",
                                                                                               quality=90)
        out.append(buf.getvalue())
    return out


def export_model(arch: str, size: int, directory: str) -> None:
    import torch

    from byoc import artifact

    spec = artifact.model_spec(arch=arch, library=artifact.resolve_arch(arch, "auto"),
                             classes=[str(i) for i in range(1000)], image_size=size,
                             mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), eval_crop_ratio=0.875)
    torch.manual_seed(0)
    artifact.write(artifact.build_model(spec).eval(), spec, Path(directory))


def handler_service(model_dir: str, env: dict, gpu_id):
    os.environ.update(env)  # the handler reads its settings when the model loads and per request
    from serve.handler import HandlerService

    service = HandlerService()
    service.initialize(Context(model_dir, 1, gpu_id))
    return service


def through_handler(service, model_dir: str, bodies: list[bytes], batch: int, seconds: float, gpu_id) -> float:
    from serve.torchserve.entry import handle_batch   # a batch as an engine hands it over

    data = [{"body": bodies[i % len(bodies)]} for i in range(batch)]
    for _ in range(3):  # warm-up (cuDNN autotuning, nvjpeg handles)
        handle_batch(service, data, Context(model_dir, batch, gpu_id))
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done == 0:
        ctx = Context(model_dir, batch, gpu_id)
        handle_batch(service, data, ctx)
        if ctx.statuses:
            raise RuntimeError(f"requests failed: {ctx.statuses}")
        done += batch
    return done / (time.perf_counter() - started)


def network_alone(model_dir: str, device: str, batch: int, seconds: float, dtype) -> float:
    import torch

    from handlers import common

    model = common.load_network(model_dir).to(device).to(memory_format=torch.channels_last)
    size = common.read_spec(model_dir)["input_size"][1]
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            model(x).float().softmax(1).cpu()  # the handler also brings the probabilities back

    for _ in range(3):
        run()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done == 0:
        run()
        done += batch
    return done / (time.perf_counter() - started)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    args = p.parse_args()

    import torch

    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        gpu_id, modes = None, {"cpu decode": {"BYOC_GPU_DECODE": "off", "BYOC_SERVE_AMP": "off"},
                               "tensor path (BYOC_GPU_DECODE=on)": {"BYOC_GPU_DECODE": "on", "BYOC_SERVE_AMP": "auto"}}
        amp = None
    else:
        gpu_id, modes = 0, {"cpu decode, fp32": {"BYOC_GPU_DECODE": "off", "BYOC_SERVE_AMP": "off"},
                            "gpu decode, defaults": {"BYOC_GPU_DECODE": "auto", "BYOC_SERVE_AMP": "auto"}}
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    model_dir = tempfile.mkdtemp(prefix="byoc-bench-gpu-serve-")
    export_model(args.arch, args.image_size, model_dir)
    os.environ["SM_MODEL_DIR"] = model_dir
    bodies = photos(64)
    print(f"{args.arch} at {args.image_size} px, 1000 classes, random weights; {len(bodies)} JPEGs at 500x375 "
          f"(mean {sum(map(len, bodies)) / len(bodies) / 1024:.0f} KB); {args.device}; torch {torch.__version__}",
          flush=True)

    top = max(args.batches)
    alone = {"fp32": network_alone(model_dir, args.device, top, args.seconds, None)}
    if amp is not None:
        alone[str(amp).replace("torch.", "")] = network_alone(model_dir, args.device, top, args.seconds, amp)
    for k, v in alone.items():
        print(f"network alone, batch {top}, {k}: {v:.1f} img/s", flush=True)
    rows = []
    for name, env in modes.items():
        service = handler_service(model_dir, env, gpu_id)
        for batch in args.batches:
            rate = through_handler(service, model_dir, bodies, batch, args.seconds, gpu_id)
            precision = "fp32" if env["BYOC_SERVE_AMP"] == "off" or amp is None else str(amp).replace("torch.", "")
            rows.append((name, batch, rate, rate / alone[precision], precision))
            print(f"{name}, batch {batch}: {rate:.1f} img/s", flush=True)
    print(f"\n| path | batch | img/s | share of the network alone (batch {top}, same precision) |\n"
          "| --- | ---: | ---: | ---: |")
    for k, v in alone.items():
        print(f"| network alone, {k} | {top} | {v:,.1f} | 100% |")
    for name, batch, rate, share, precision in rows:
        print(f"| handler, {name} ({precision}) | {batch} | {rate:,.1f} | {share:.0%} |")


if __name__ == "__main__":
    main()
