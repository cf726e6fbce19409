"""`python -m train.classify` end to end on real data (scikit-learn digits), in a subprocess."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from support.classify_data import digits, parity_heads, write_image_folder, write_parquet_bytes

pytestmark = pytest.mark.slow  # real training runs in subprocesses

REPO = Path(__file__).resolve().parents[3]
# timm's 100k-parameter test_efficientnet at 16x16: fast enough on 2 busy CPU cores
FAST = ["--arch", "test_efficientnet", "--image-size", "16", "--hflip", "false", "--min-crop-scale", "0.5",
        "--checkpoint-every-seconds", "0"]
EPOCH_LINE = re.compile(r"epoch=(\d+) train_loss=([0-9.]+) train_acc=([0-9.]+) val_loss=([0-9.]+) "
                        r"val_acc=([0-9.]+) lr=([0-9.e-]+) images_per_sec=([0-9.]+)")

pytest.importorskip("timm")


def trainer(root: Path, *args: str) -> list:
    return [sys.executable, "-m", "train.classify", *FAST, *args]


def env_for(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    return {**env, "BYOC_ML_ROOT": str(root), "PYTHONPATH": str(REPO), "WORLD_SIZE": "1"}


def ml_root(tmp_path: Path, images, labels) -> Path:
    write_image_folder(tmp_path / "input/data/train", images, labels)
    return tmp_path


def predict_with_artifact(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """What serving does: rebuild from model.json alone, load model.pt weights-only, predict."""
    from byoc.artifact import build_model, eval_transform

    spec = json.loads((model_dir / "model.json").read_text())
    model = build_model(spec).eval()
    model.load_state_dict(torch.load(model_dir / spec["weights"], weights_only=True))
    size = spec["input_size"][1]
    tf = eval_transform(size, 0.875)
    x = torch.stack([tf(torch.from_numpy(im)[None].expand(3, -1, -1)) for im in images]).float() / 255
    x = (x - torch.tensor(spec["mean"]).view(1, 3, 1, 1)) / torch.tensor(spec["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).argmax(1).numpy()


def test_trains_digits_to_90_percent_and_exports(tmp_path):
    images, labels = digits()
    root = ml_root(tmp_path, images, labels)
    started = time.monotonic()
    proc = subprocess.run(trainer(root, "--epochs", "4", "--workers", "0", "--log-interval", "0"),
                          env=env_for(root), cwd=REPO, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    epochs = EPOCH_LINE.findall(proc.stdout)
    assert [e[0] for e in epochs] == ["1", "2", "3", "4"], proc.stdout
    val_acc = float(epochs[-1][4])
    print(f"digits: val_acc={val_acc:.4f} after 4 epochs in {seconds:.1f} s")
    assert val_acc >= 0.90, proc.stdout

    model_dir = root / "model"
    spec = json.loads((model_dir / "model.json").read_text())
    assert (spec["arch"], spec["library"], spec["num_classes"], spec["input_size"]) == \
        ("test_efficientnet", "timm", 10, [3, 16, 16])
    assert spec["classes"] == [str(i) for i in range(10)] and spec["heads"] is None
    assert "from handlers.image_classifier import model_fn" in (model_dir / "code/inference.py").read_text()
    accuracy = float((predict_with_artifact(model_dir, images) == labels).mean())
    assert accuracy >= 0.90  # all 1,797 digits, 90% of which were trained on
    assert (root / "output/data/training_curves.png").stat().st_size > 1000
    assert any((root / "output/tensorboard").iterdir())
    assert len(list((root / "checkpoints").glob("checkpoint-*.pt"))) == 2  # --keep-checkpoints default


def test_missing_channel_fails_fast_with_reason(tmp_path):
    proc = subprocess.run(trainer(tmp_path), env=env_for(tmp_path), cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "'train' channel is missing" in proc.stderr


def stop_at_step(command: list, env: dict, step: int | str) -> tuple[int, str]:
    """Run the trainer, send SIGTERM once it logs ``step`` of epoch 1 (or, for step "end",
    its epoch-1 metrics line: during the epoch's evaluation and checkpoint); (exit status, its log)."""
    run = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in run.stdout:
        seen.append(line)
        if f"progress epoch=1 step={step}/" in line or (step == "end" and " epoch=1 train_loss=" in line):
            run.send_signal(signal.SIGTERM)
            break
    rest, _ = run.communicate(timeout=300)
    return run.returncode, "".join(seen) + rest


def epoch_metrics(stdout: str, epoch: int) -> str:
    """The epoch's metric line without its timestamp and speed."""
    line = next(text for text in stdout.splitlines() if f" epoch={epoch} train_loss=" in text)
    return re.sub(r" images_per_sec=\S+", "", line.split(" INFO ", 1)[1])


def multi_head_root(tmp_path: Path, images, labels) -> Path:
    write_parquet_bytes(tmp_path / "input/data/train/d.parquet", images, parity_heads(labels))
    return tmp_path


@pytest.mark.parametrize("write_root, extra", [
    (ml_root, []),
    # multi-head parquet with CutMix/MixUp: the mixing's random draws must resume exactly too
    (multi_head_root, ["--label-columns", "digit,high", "--cutmix-alpha", "1", "--mixup-alpha", "0.3",
                       "--label-smoothing", "0.1"]),
], ids=["imagefolder", "parquet-multihead-mixing"])
def test_sigterm_then_resume_is_bitwise_equal_to_uninterrupted(tmp_path, write_root, extra):
    images, labels = digits(per_class=30)  # 300 images: 240 train -> 15 steps of 16 per epoch
    args = ["--epochs", "2", "--batch-size", "16", "--val-fraction", "0.2", "--deterministic", "true",
            "--workers", "1", "--log-interval", "1", *extra]
    whole = write_root(tmp_path / "whole", images, labels)
    proc = subprocess.run(trainer(whole, *args), env=env_for(whole), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    cut = write_root(tmp_path / "cut", images, labels)
    stop_after = random.randint(2, 12)  # a random step inside the first epoch
    returncode, log = stop_at_step(trainer(cut, *args), env_for(cut), stop_after)
    assert returncode == 143, log[-3000:]
    assert "checkpoint (SIGTERM)" in log and not (cut / "model/model.pt").exists()

    resumed = subprocess.run(trainer(cut, *args), env=env_for(cut), cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "epoch=1 step=" in resumed.stdout
    a = torch.load(whole / "model/model.pt", weights_only=True)
    b = torch.load(cut / "model/model.pt", weights_only=True)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"stopped after step {stop_after}; differing tensors: {different[:5]}"
    # and the resumed run's last epoch line (per-head recalls included) matches the uninterrupted one's
    assert epoch_metrics(proc.stdout, 2) == epoch_metrics(resumed.stdout, 2)


def test_sigterm_at_the_end_of_an_epoch_stops_says_so_and_resumes(tmp_path):
    """The signal lands in the epoch's evaluation: the epoch checkpoint is the one to resume from."""
    images, labels = digits(per_class=30)
    args = ["--epochs", "2", "--batch-size", "16", "--val-fraction", "0.2", "--deterministic", "true",
            "--workers", "1", "--log-interval", "1"]
    whole = ml_root(tmp_path / "whole", images, labels)
    proc = subprocess.run(trainer(whole, *args), env=env_for(whole), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cut = ml_root(tmp_path / "cut", images, labels)
    returncode, log = stop_at_step(trainer(cut, *args), env_for(cut), "end")
    assert returncode == 143, log[-3000:]
    assert "stopped by signal" in log, log[-3000:]
    assert re.findall(r"checkpoint \((\w+)\)", log)[-1] in ("epoch", "SIGTERM"), log[-3000:]
    resumed = subprocess.run(trainer(cut, *args), env=env_for(cut), cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stdout[-3000:]
    a = torch.load(whole / "model/model.pt", weights_only=True)
    b = torch.load(cut / "model/model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
