"""Training throughput of the built-in trainer, side by side with the workshops' plain loop and the
synthetic-data ceiling, in the training image (DESIGN.md, "Performance").

    python bench/train_throughput.py --image pytorch-byoc-train:cpu --image-size 64 --epochs 4

Data: an ImageFolder of real encoded JPEGs (256x256 crops of foolbox's ImageNet sample photos, or
the demo's texture photos when foolbox is absent), written once under --work. Three runs, each in
its own `docker run --cpus N` of the same image, the same model (torchvision resnet18), image size
and batch size:
  built-in   `train` (the built-in trainer, its defaults for this machine), images/s from its epoch lines
  workshop   bench/train_workshop_loop.py: ImageFolder, default DataLoader (num_workers=0), fp32
  synthetic  the same loop on tensors in memory: the ceiling for the model on these cores
The first epoch of each is a warm-up and is left out. Prints a table.
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
import time
import uuid

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.environ.get("DOCKER") or ("/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker")


def source_photos() -> list[str]:
    spec = importlib.util.find_spec("foolbox")
    found = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "data", "imagenet_*.jpg"))) if spec else []
    return found or sorted(glob.glob(os.path.join(ROOT, "samples", "textures", "*", "*.png")))


def write_dataset(root: str, per_class: int, classes: int, seed: int = 0) -> int:
    """ImageFolder of JPEG crops of real photos; class k takes photos k, k+classes, ..."""
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in source_photos()]
    for k in range(classes):
        own = photos[k::classes] or photos
        os.makedirs(os.path.join(root, f"class{k}"), exist_ok=True)
        for i in range(per_class):
            img = own[i % len(own)]
            side = int(rng.integers(min(img.size) // 2, min(img.size) + 1))
            x, y = rng.integers(0, img.width - side + 1), rng.integers(0, img.height - side + 1)
            crop = img.crop((x, y, x + side, y + side)).resize((256, 256), Image.BILINEAR)
            crop.save(os.path.join(root, f"class{k}", f"{i:04d}.jpg"), quality=90)
    return per_class * classes


def docker_run(image: str, cpus: str, mounts: dict, command: list, timeout: int) -> str:
    name = f"byoc-bench-train-{uuid.uuid4().hex[:8]}"
    args = [DOCKER, "run", "--rm", "--name", name, "--cpus", cpus, "--shm-size", "1g"]
    for src, dst in mounts.items():
        args += ["-v", f"{src}:{dst}"]
    try:
        proc = subprocess.run(args + [image, *command], capture_output=True, text=True, timeout=timeout)
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout + proc.stderr


def built_in(args, ml: str) -> float:
    for sub in ("model", "output", "checkpoints"):   # a checkpoint left behind would resume the run
        shutil.rmtree(os.path.join(ml, sub), ignore_errors=True)
    hp = {"arch": "resnet18", "image-size": str(args.image_size), "epochs": str(args.epochs),
          "batch-size": str(args.batch_size), "val-fraction": "0.05", "checkpoint-every-seconds": "0",
          "log-interval": "0"}
    with open(os.path.join(ml, "input/config/hyperparameters.json"), "w") as f:
        json.dump(hp, f)
    log = docker_run(args.image, args.cpus, {ml: "/opt/ml"}, ["train"], args.timeout)
    rates = [float(m) for m in re.findall(r"epoch=\d+ .*images_per_sec=([\d.]+)", log)]
    if len(rates) < 2:
        raise RuntimeError(f"no epoch lines in the trainer's log:\n{log[-3000:]}")
    return statistics.mean(rates[1:])


def loop(args, ml: str, synthetic: bool, images: int) -> float:
    command = ["python", "/bench/train_workshop_loop.py", "--image-size", str(args.image_size),
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--images", str(images)]
    if synthetic:
        command.append("--synthetic")
    log = docker_run(args.image, args.cpus, {ml: "/opt/ml", os.path.join(ROOT, "bench"): "/bench"}, command,
                     args.timeout)
    return float(re.search(r"images_per_sec=([\d.]+)", log).group(1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", default="pytorch-byoc-train:cpu")
    p.add_argument("--cpus", default="2")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4, help="per run; the first is left out")
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--rounds", type=int, default=1, help="repeat the three runs, interleaved")
    p.add_argument("--work", default="/tmp/byoc-bench-train")
    p.add_argument("--timeout", type=int, default=1800)
    args = p.parse_args()

    ml = os.path.abspath(os.path.join(args.work, "ml"))
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(os.path.join(ml, "input/config"))
    n = write_dataset(os.path.join(ml, "input/data/train"), args.per_class, 3)
    with open(os.path.join(ml, "input/config/inputdataconfig.json"), "w") as f:
        json.dump({"train": {"TrainingInputMode": "File"}}, f)
    print(f"{n} JPEGs (256x256, 3 classes) from {len(source_photos())} real photos; resnet18 at "
          f"{args.image_size} px, batch {args.batch_size}, --cpus {args.cpus}, {args.epochs} epochs per run",
          flush=True)
    results = {"built-in": [], "workshop": [], "synthetic": []}
    for _ in range(args.rounds):
        t = time.monotonic()
        results["built-in"].append(built_in(args, ml))
        results["workshop"].append(loop(args, ml, synthetic=False, images=n))
        results["synthetic"].append(loop(args, ml, synthetic=True, images=n))
        print(f"round: {', '.join(f'{k} {v[-1]:.1f}' for k, v in results.items())} img/s "
              f"({time.monotonic() - t:.0f} s)", flush=True)
    ceiling = statistics.mean(results["synthetic"])
    print("\n| run | images/s | share of the synthetic ceiling |\n| --- | ---: | ---: |")
    for name, rates in results.items():
        rate = statistics.mean(rates)
        print(f"| {name} | {rate:.1f} | {rate / ceiling:.0%} |")


if __name__ == "__main__":
    main()
