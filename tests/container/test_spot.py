"""Spot interruptions in the real training image, as SageMaker delivers them.

1. SIGTERM at a random step of the built-in trainer (deterministic mode, checkpoints to
   /opt/ml/checkpoints mounted from the host): the container ends within SageMaker's 120 s
   grace with status 143 and a failure file that says it was stopped; a second run on the same
   checkpoints resumes where it stopped, and its model.pt is bitwise equal to that of an
   uninterrupted run in the same image.
2. kill -9 while a user script (byoc.checkpoint, script mode) writes a checkpoint: the newest
   complete checkpoint loads with weights_only=True and a rerun resumes from it; the stray temp
   file is never taken for a checkpoint.
"""
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from support.classify_data import digits, write_image_folder

torch = pytest.importorskip("torch")

GRACE_S = 120  # SageMaker's time between SIGTERM and SIGKILL
HP = {"arch": "test_efficientnet", "image-size": "24", "epochs": "3", "batch-size": "16",
      "hflip": "false", "val-fraction": "0.15", "workers": "1", "seed": "0", "deterministic": "true",
      "checkpoint-every-steps": "5", "checkpoint-every-seconds": "0", "log-interval": "1"}
PROGRESS = re.compile(r"progress epoch=\d+ step=\d+/\d+")
RESUMED = re.compile(r"resumed from (\S+) at epoch=(\d+) step=(\d+) \(global step (\d+)\)")


def ml_tree(root: Path, data_from: Path | None = None, hyperparameters=HP) -> Path:
    """An /opt/ml tree with the digits as an ImageFolder train channel."""
    (root / "input/config").mkdir(parents=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    (root / "input/config/inputdataconfig.json").write_text(json.dumps({"train": {"TrainingInputMode": "File"}}))
    (root / "checkpoints").mkdir()
    images, labels = digits(per_class=30)
    write_image_folder(root / "input/data/train", images, labels)
    return root


@pytest.fixture
def containers(docker):
    names = []
    yield names
    if names:
        subprocess.run([docker, "rm", "-f", *names], capture_output=True)


def start(docker, image, ml: Path, names: list, extra=()) -> str:
    name = f"byoc-test-spot-{uuid.uuid4().hex[:10]}"
    names.append(name)
    subprocess.run([docker, "run", "-d", "--name", name, "--shm-size", "512m", "-v", f"{ml}:/opt/ml",
                    *extra, image, "train"], check=True, capture_output=True, text=True)
    return name


def kill_9_now(docker, name: str, pid: int) -> None:
    """SIGKILL the container's PID 1 from the host: the kernel then kills every process in
    the container, as ``docker kill -s KILL`` does, but microseconds after the decision
    instead of the ~0.1 s a docker CLI call takes (a 64 MB write can finish in that time)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):   # the daemon's PIDs are not ours to see
        subprocess.run([docker, "kill", "-s", "KILL", name], check=True, capture_output=True)


def wait_exit(docker, name, timeout) -> tuple:
    """(exit status, combined log) once the container has stopped."""
    code = subprocess.run([docker, "wait", name], capture_output=True, text=True, timeout=timeout).stdout.strip()
    out = subprocess.run([docker, "logs", name], capture_output=True, text=True)
    return int(code), out.stdout + out.stderr


def run_to_end(docker, image, ml, names, timeout=900):
    code, log = wait_exit(docker, start(docker, image, ml, names), timeout)
    assert code == 0, log[-4000:]
    return log


def test_sigterm_at_a_random_step_then_resume_is_bitwise_equal(docker, train_image, containers, tmp_path):
    pytest.importorskip("timm")
    rng = random.Random()  # a different step each run; printed so a failure can be replayed
    reference = ml_tree(tmp_path / "reference")
    run_to_end(docker, train_image, reference, containers)
    expected = torch.load(reference / "model/model.pt", weights_only=True)

    ml = ml_tree(tmp_path / "spot")
    name = start(docker, train_image, ml, containers)
    # 255 training images / 16 = 16 steps per epoch, 48 in all; first checkpoint at step 5
    target = rng.randint(6, 40)
    print(f"SIGTERM after step {target}")
    follower = subprocess.Popen([docker, "logs", "-f", name], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    steps, seen_checkpoint = 0, False
    try:
        for line in follower.stdout:  # the trainer logs one progress line per step
            seen_checkpoint = seen_checkpoint or "checkpoint (periodic)" in line
            if PROGRESS.search(line):
                steps += 1
            if seen_checkpoint and steps >= target:
                subprocess.run([docker, "kill", "-s", "TERM", name], check=True, capture_output=True)
                break
    finally:
        follower.kill()
        follower.wait()
    assert seen_checkpoint and steps >= target, f"the run ended before step {target}"
    signalled = time.monotonic()
    code, log = wait_exit(docker, name, GRACE_S + 60)
    took = time.monotonic() - signalled
    print(f"exited {code} {took:.1f} s after SIGTERM")
    assert took < GRACE_S, f"still running {took:.0f} s after SIGTERM: SageMaker would have killed it"
    # documented (train/classify --help): 143 = stopped by SIGTERM after saving a checkpoint
    assert code == 143, log[-3000:]
    # the checkpoint it resumes from: written on SIGTERM, or the epoch's when the signal came
    # during the evaluation at the end of an epoch
    last_checkpoint = re.findall(r"checkpoint \((\w+)\)", log)[-1]
    assert last_checkpoint in ("SIGTERM", "epoch") and "stopped by signal" in log, log[-3000:]
    failure = (ml / "output/failure").read_text()
    assert failure.startswith("job stopped by SIGTERM: built-in trainer exited with code 143 (SIGTERM)"), failure
    assert not (ml / "output/success").exists() and not (ml / "model/model.pt").exists()
    saved = [int(p.stem.split("-")[1]) for p in (ml / "checkpoints").glob("checkpoint-*.pt")]
    assert saved and max(saved) >= target, saved

    log = run_to_end(docker, train_image, ml, containers)
    resumed = RESUMED.search(log)
    assert resumed, log[-3000:]
    print(resumed.group(0))
    assert int(resumed.group(4)) == max(saved)  # from the checkpoint SIGTERM wrote, not an older one
    assert (ml / "output/success").exists() and not (ml / "output/failure").exists()
    got = torch.load(ml / "model/model.pt", weights_only=True)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


WRITER = '''
"""Writes ~64 MB checkpoints with byoc.checkpoint in a loop; resumes from the newest one."""
import argparse, os, torch
from byoc.checkpoint import Checkpointer

parser = argparse.ArgumentParser()
parser.add_argument("--saves", type=int, default=1000)
args = parser.parse_args()
ckpt = Checkpointer(os.environ["SM_CHECKPOINT_DIR"], keep_last=3)
state = ckpt.load_latest()
start = state["step"] + 1 if state else 0
print(f"resumed from {state['path']} step {state['step']}" if state else "fresh start", flush=True)
for step in range(start, start + args.saves):
    # every element equals the step: a torn or mixed-up file shows at once
    ckpt.save({"step": step, "weights": torch.full((16 * 1024 * 1024,), float(step))}, step)
    print(f"saved {step}", flush=True)
'''


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one(docker, train_image, containers, tmp_path):
    from byoc.checkpoint import Checkpointer

    ml = tmp_path / "ml"
    (ml / "input/config").mkdir(parents=True)
    (ml / "code").mkdir()
    (ml / "checkpoints").mkdir()
    (ml / "code/writer.py").write_text(WRITER)
    (ml / "input/config/hyperparameters.json").write_text(json.dumps({"sagemaker_program": '"writer.py"'}))
    ckdir = ml / "checkpoints"
    left, logs = [], ""
    # a write can finish between seeing its temp file and the kill: try again (each run resumes)
    for attempt in range(8):
        name = start(docker, train_image, ml, containers)
        pid = int(subprocess.run([docker, "inspect", "-f", "{{.State.Pid}}", name],
                                 capture_output=True, text=True, check=True).stdout)
        deadline = time.monotonic() + 300
        seen = False
        # poll the mounted folder for a write in progress with a complete checkpoint beside it
        while time.monotonic() < deadline and not seen:
            seen = bool(list(ckdir.glob(".checkpoint-*.tmp")) and list(ckdir.glob("checkpoint-*.pt")))
            if seen:
                kill_9_now(docker, name, pid)
            else:
                time.sleep(0.002)
        assert seen, "no checkpoint write was seen in progress"
        code, log = wait_exit(docker, name, 60)
        assert code == 137, log[-2000:]  # 128 + SIGKILL
        logs += log
        left = list(ckdir.glob(".checkpoint-*.tmp"))
        print(f"attempt {attempt + 1}, after kill -9: "
              f"{[(p.name, p.stat().st_size) for p in sorted(ckdir.iterdir())]}")
        if left:
            break
    assert left, "every kill came after the write it aimed at had finished"

    # the temp file is not a checkpoint; the newest complete one loads weights-only and is whole
    assert not set(Checkpointer(ckdir).checkpoints()) & set(left)
    newest = Checkpointer(ckdir).checkpoints()[-1]
    state = torch.load(newest, weights_only=True)
    step = int(newest.stem.split("-")[1])
    assert state["step"] == step and torch.equal(state["weights"], torch.full((16 * 1024 * 1024,), float(step)))
    assert f"saved {step}" in logs  # the last save the writer finished

    # the rerun resumes from that newest complete file, never from the temp file
    (ml / "input/config/hyperparameters.json").write_text(
        json.dumps({"sagemaker_program": '"writer.py"', "saves": "1"}))
    code, log = wait_exit(docker, start(docker, train_image, ml, containers), 300)
    assert code == 0, log[-3000:]
    assert f"resumed from /opt/ml/checkpoints/{newest.name} step {step}" in log, log[-2000:]
    assert f"saved {step + 1}" in log
    assert (ckdir / f"checkpoint-{step + 1:010d}.pt").exists()
