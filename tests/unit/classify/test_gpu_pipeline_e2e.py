"""`python -m train.classify --data-pipeline gpu` end to end, with the GPU pipeline's device
being the CPU (the launcher below lets it run there): it trains, logs which pipeline ran and
its CPU fallbacks, and a run stopped by SIGTERM resumes to the very same weights."""
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support.classify_data import digits
from test_classify_e2e import FAST, REPO, env_for, epoch_metrics, stop_at_step

pytestmark = pytest.mark.slow
pytest.importorskip("timm")

# the only difference from `python -m train.classify`: the GPU pipeline may run on the CPU
LAUNCH = ("import sys; from train.classify import gpu_pipeline; gpu_pipeline.cuda_device = lambda d: True; "
          "from train.classify.__main__ import main; sys.exit(main(sys.argv[1:]))")


def trainer(*args: str) -> list:
    return [sys.executable, "-c", LAUNCH, *FAST, "--data-pipeline", "gpu", *args]


def jpeg_root(root: Path, per_class: int) -> Path:
    """Digits as RGB JPEGs (32x32), with every 10th file a PNG and every 15th a grayscale JPEG:
    the files nvjpeg must not get."""
    images, labels = digits(per_class=per_class)
    for i, (img, y) in enumerate(zip(images, labels)):
        d = root / "input/data/train" / str(int(y))
        d.mkdir(parents=True, exist_ok=True)
        rgb = Image.fromarray(np.kron(img, np.ones((4, 4), dtype=np.uint8))).convert("RGB")
        if i % 10 == 3:
            rgb.save(d / f"{i:04d}.png")
        elif i % 15 == 4:
            rgb.convert("L").save(d / f"{i:04d}.jpg", quality=95)
        else:
            rgb.save(d / f"{i:04d}.jpg", quality=95)
    return root


def test_gpu_pipeline_trains_logs_and_resumes_bitwise(tmp_path):
    args = ["--epochs", "2", "--batch-size", "16", "--val-fraction", "0.2", "--deterministic", "true",
            "--workers", "1", "--log-interval", "1", "--image-size", "24", "--cutmix-alpha", "1"]
    whole = jpeg_root(tmp_path / "whole", 30)
    proc = subprocess.run(trainer(*args), env=env_for(whole), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "data pipeline: gpu (--data-pipeline gpu); nvjpeg decode" in proc.stdout
    counted = [line for line in proc.stdout.splitlines() if "gpu pipeline: " in line]
    assert len(counted) == 2 and all(" of 240 images of this pass decoded on the CPU" in c for c in counted)
    assert all(int(c.split("gpu pipeline: ")[1].split()[0]) > 0 for c in counted)

    cut = jpeg_root(tmp_path / "cut", 30)
    stop_after = random.randint(2, 12)
    returncode, log = stop_at_step(trainer(*args), env_for(cut), stop_after)
    assert returncode == 143 and "checkpoint (SIGTERM)" in log, log[-3000:]

    resumed = subprocess.run(trainer(*args), env=env_for(cut), cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    a = torch.load(whole / "model/model.pt", weights_only=True)
    b = torch.load(cut / "model/model.pt", weights_only=True)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"stopped after step {stop_after}; differing tensors: {different[:5]}"
    assert epoch_metrics(proc.stdout, 2) == epoch_metrics(resumed.stdout, 2)

    # another --seed is another augmentation: the checkpoint refuses it
    other = subprocess.run(trainer(*args, "--seed", "1"), env=env_for(cut), cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert other.returncode == 2 and "'seed': (0, 1)" in other.stderr
