"""The built-in trainer against the synthetic ceiling, on real-photo JPEGs it writes itself (issue 10).

Plain Python on the machine itself, no docker:

    python3 bench/gpu_train.py                      # a GPU: ResNet-50 at 224 px, 8,000 JPEGs, batch 256
    python3 bench/gpu_train.py --device cpu --images 64 --arch resnet18 --image-size 32 \\
        --batch-size 16 --epochs 2 --ceiling-steps 2     # smoke run (tests/unit/test_gpu_bench.py)

Data: an ImageFolder of JPEGs (10 classes) cut from real photographs (foolbox's ImageNet samples,
scikit-learn's and scikit-image's photos, samples/photos: whichever are installed), each a random
crop resized to 300-640 px on its longer side at 4:3 or 3:4, quality 90 (about 500x375 and 50 KB,
as in the issue). Runs, each as its own process:

  ceiling   the trainer's own model, optimizer and step (uint8 batch -> normalise -> bf16 autocast
            on a GPU -> loss -> backward -> step) on one batch already on the device
  cpu       `python -m train.classify --data-pipeline cpu` (decode + augmentation in the workers)
  gpu       `python -m train.classify --data-pipeline gpu` (nvjpeg + crop/flip on the device)

The trainer runs with its defaults otherwise (workers, amp, channels_last); its images/s are the
mean of its epoch lines after the first. Prints a table.
"""
import argparse
import glob
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# --device cpu smoke runs: the GPU pipeline on the CPU, as tests/unit/classify/test_gpu_pipeline_e2e.py
ON_CPU = ("import sys; from train.classify import gpu_pipeline; gpu_pipeline.cuda_device = lambda d: True; "
          "from train.classify.__main__ import main; sys.exit(main(sys.argv[1:]))")


def source_photos() -> list[str]:
    """Real photographs from whatever installed package ships them, and the demo's."""
    found = []
    for pkg, pattern in [("foolbox", "data/imagenet_*.jpg"), ("sklearn", "datasets/images/*.jpg"),
                         ("skimage", "data/*.png")]:
        spec = importlib.util.find_spec(pkg)
        if spec and spec.origin:
            found += sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), pattern)))
    found = [p for p in found if "text" not in p and "camera" not in p]  # drop non-photos of skimage
    return found + sorted(glob.glob(os.path.join(ROOT, "samples", "photos", "*.jpg")))


def _write_one(job) -> int:
    from PIL import Image

    source, path, seed = job
    rng = np.random.default_rng(seed)
    img = Image.open(source).convert("RGB")
    side = int(rng.integers(min(img.size) // 2, min(img.size) + 1))
    x, y = int(rng.integers(0, img.width - side + 1)), int(rng.integers(0, img.height - side + 1))
    long_side = int(rng.integers(300, 641))
    size = (long_side, long_side * 3 // 4) if rng.random() < 0.7 else (long_side * 3 // 4, long_side)
    img.crop((x, y, x + side, y + side)).resize(size, Image.BICUBIC).save(path, quality=90)
    return os.path.getsize(path)


def write_dataset(root: str, images: int, classes: int = 10) -> tuple[int, float]:
    photos = source_photos()
    jobs = []
    for i in range(images):
        d = os.path.join(root, f"class{i % classes}")
        os.makedirs(d, exist_ok=True)
        jobs.append((photos[i % len(photos)], os.path.join(d, f"{i:05d}.jpg"), i))
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        sizes = list(pool.map(_write_one, jobs, chunksize=64))
    return len(photos), statistics.mean(sizes) / 1024


def ceiling(args) -> float:
    """The trainer's step on a batch already on the device: the most the data path can give."""
    import torch
    from torch import nn

    from byoc import artifact
    from train.classify import engine, optim

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    spec = artifact.model_spec(arch=args.arch, library=artifact.resolve_arch(args.arch, "auto"),
                             classes=[str(i) for i in range(10)], image_size=args.image_size,
                             mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    model = artifact.build_model(spec).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = engine.choose_amp("auto", device)
    opt, _ = optim.make_optimizer(model, "sgd", 0.1 * args.batch_size / 256, 1e-4, 0.9, device)
    criterion = nn.CrossEntropyLoss()
    images = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8,
                           device=device)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255

    def step():
        x = images.float().sub_(mean).div_(std)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with torch.autocast(device.type, dtype=amp) if amp else torch.autocast(device.type, enabled=False):
            loss = criterion(model(x), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(max(2, args.ceiling_steps // 5)):
        step()
    sync()
    started = time.perf_counter()
    for _ in range(args.ceiling_steps):
        step()
    sync()
    return args.ceiling_steps * args.batch_size / (time.perf_counter() - started)


def trainer(args, ml: str, pipeline: str) -> tuple[float, str]:
    for sub in ("model", "output", "checkpoints"):
        shutil.rmtree(os.path.join(ml, sub), ignore_errors=True)
    hp = ["--arch", args.arch, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
          "--epochs", str(args.epochs), "--val-fraction", "0", "--checkpoint-every-seconds", "0",
          "--log-interval", "0", "--data-pipeline", pipeline]
    env = {**os.environ, "BYOC_ML_ROOT": ml, "PYTHONPATH": ROOT, "WORLD_SIZE": "1"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        command = [sys.executable, "-c", ON_CPU, *hp]
    else:
        command = [sys.executable, "-m", "train.classify", *hp]
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"the trainer ({pipeline}) exited {proc.returncode}:\n{log[-3000:]}")
    rates = [float(m) for m in re.findall(r"epoch=\d+ .*images_per_sec=([\d.]+)", log)]
    ran = re.search(r"data pipeline: (\w+) \(([^)]*)\)", log)
    fallback = re.findall(r"gpu pipeline: (\d+ of \d+) images", log)
    workers = re.search(r"(\d+) workers per rank", log)
    note = f"{ran.group(1)} ({ran.group(2)}), {workers.group(1) if workers else '?'} workers"
    if fallback:
        note += f", CPU-decoded {fallback[-1]}"
    return statistics.mean(rates[1:] if len(rates) > 1 else rates), note


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--images", type=int, default=8000)
    p.add_argument("--epochs", type=int, default=3, help="per trainer run; the first is left out")
    p.add_argument("--ceiling-steps", type=int, default=40)
    p.add_argument("--pipelines", nargs="+", default=["cpu", "gpu"])
    p.add_argument("--work", default="/tmp/byoc-bench-gpu-train")
    p.add_argument("--timeout", type=int, default=600)
    args = p.parse_args()

    ml = os.path.join(args.work, "ml")
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(os.path.join(ml, "input/config"))
    with open(os.path.join(ml, "input/config/inputdataconfig.json"), "w") as f:
        json.dump({"train": {"TrainingInputMode": "File"}}, f)
    started = time.monotonic()
    sources, kb = write_dataset(os.path.join(ml, "input/data/train"), args.images)
    print(f"{args.images} JPEGs (300-640 px, mean {kb:.0f} KB) from {sources} real photos in "
          f"{time.monotonic() - started:.0f} s; {args.arch} at {args.image_size} px, batch {args.batch_size}, "
          f"{args.device}, {os.cpu_count()} CPUs", flush=True)

    rows = [("ceiling (batch already on the device)", ceiling(args), "")]
    print(f"ceiling: {rows[0][1]:.1f} img/s", flush=True)
    for pipeline in args.pipelines:
        rate, note = trainer(args, ml, pipeline)
        rows.append((f"trainer --data-pipeline {pipeline}", rate, note))
        print(f"{pipeline}: {rate:.1f} img/s ({note})", flush=True)
    print("\n| run | img/s | share of ceiling | pipeline that ran |\n| --- | ---: | ---: | --- |")
    for name, rate, note in rows:
        print(f"| {name} | {rate:,.1f} | {rate / rows[0][1]:.0%} | {note} |")


if __name__ == "__main__":
    main()
