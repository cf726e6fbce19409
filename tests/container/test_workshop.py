"""Workshop-style user scripts (tests/container/workshop/) run unchanged in the training image, in
script mode as SageMaker starts them: SAGEMAKER_PROGRAM and a source dir (a folder, or the SDK's
sourcedir.tar.gz), hyperparameters as command-line arguments, SM_* variables, data in the
training channel in the datasets' real on-disk formats (generated: CIFAR-10 python pickles,
MNIST idx files).

CIFAR-10: the workshop's torchvision.datasets.CIFAR10(download=False) checks the MD5s of the
published files, which generated files cannot match; the workshop script here turns that one
check off (see its header) and keeps torchvision's reader. MNIST's reader only checks that the
files exist, so the Horovod and Lightning scripts use torchvision's MNIST as is.
"""
import json
import os
import pickle
import re
import subprocess
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

WORKSHOP = Path(__file__).parent / "workshop"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


# ------------------------------------------------------------------ data in the real formats
def learnable_images(n, shape, seed):
    """uint8 images whose class shows as a bright band at a class-dependent row, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 96, (n, *shape), dtype=np.uint8)
    band = shape[-2] // 10
    for i, y in enumerate(labels):
        images[i, ..., y * band:(y + 1) * band, :] = 255
    return images, labels


def write_cifar10(root: Path, per_batch=100, test=100) -> Path:
    """cifar-10-batches-py as the published tarball unpacks: 5 train batches, test_batch and
    batches.meta, each a pickled dict with 'data' (N x 3072 uint8, channel-major) and 'labels'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        images, labels = learnable_images(test if name == "test_batch" else per_batch, (3, 32, 32), seed=k)
        batch = {"batch_label": f"generated {name}", "labels": labels.tolist(),
                 "data": images.reshape(len(labels), 3072), "filenames": [f"{name}_{i}.png" for i in range(len(labels))]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
            "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format of MNIST: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, train=512, test=128) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", train, 1), ("t10k", test, 2)):
        images, labels = learnable_images(n, (28, 28), seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


# ------------------------------------------------------------------ a job as SageMaker starts it
def job_tree(ml: Path, hyperparameters: dict, channel_writer) -> Path:
    """/opt/ml with one 'training' channel; hyperparameters JSON-encoded as the SDK writes them."""
    (ml / "input/config").mkdir(parents=True)
    (ml / "input/config/hyperparameters.json").write_text(
        json.dumps({k: json.dumps(v) for k, v in hyperparameters.items()}))
    (ml / "input/config/inputdataconfig.json").write_text(
        json.dumps({"training": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}}))
    (ml / "input/config/resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    channel_writer(ml / "input/data/training")
    return ml


def run_job(docker, image, ml: Path, env=None, mounts=(), timeout=900, hostname="algo-1"):
    name = f"byoc-test-workshop-{uuid.uuid4().hex[:10]}"
    # SageMaker names the (single) host algo-1, as resourceconfig.json says
    args = [docker, "run", "--rm", "--name", name, "--shm-size", "512m", "-v", f"{ml}:/opt/ml"]
    if hostname:
        args += ["--hostname", hostname]
    for src, dst in mounts:
        args += ["-v", f"{src}:{dst}:ro"]
    for k, v in (env or {}).items():
        args += ["-e", f"{k}={v}"]
    try:
        proc = subprocess.run(args + [image, "train"], capture_output=True, text=True, timeout=timeout)
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)
    return proc.returncode, proc.stdout + proc.stderr


def copy_code(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".pyc":
            (dest / f.name).write_bytes(f.read_bytes())
    return dest


def loads_weights_only(path: Path) -> dict:
    state = torch.load(path, weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    return state


def test_cifar10_train_py_from_a_source_tarball(docker, train_image, tmp_path):
    ml = job_tree(tmp_path / "ml", {"epochs": 3, "batch_size": 16, "lr": 0.01, "workers": 1}, write_cifar10)
    # the SDK uploads sourcedir.tar.gz; SAGEMAKER_SUBMIT_DIRECTORY / SAGEMAKER_PROGRAM name it
    source = ml / "input/source"
    source.mkdir(parents=True)
    with tarfile.open(source / "sourcedir.tar.gz", "w:gz") as tar:
        tar.add(WORKSHOP / "cifar10" / "train.py", arcname="train.py")
    code, log = run_job(docker, train_image, ml, env={
        "SAGEMAKER_PROGRAM": "train.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/input/source/sourcedir.tar.gz"})
    assert code == 0, log[-4000:]
    # sagemaker-training's Environment (argparse defaults) read the job's hosts, GPUs and channel
    assert "Hosts: ['algo-1'] current host: algo-1 gpus: 0" in log, log[-3000:]
    assert "train images: 500 test images: 100" in log
    # --epochs 3 reached the script as a command-line argument
    assert re.findall(r"\[epoch (\d+)\]", log) == ["1", "2", "3"], log[-3000:]
    accuracy = float(re.search(r"test accuracy: ([\d.]+)", log).group(1))
    print(f"cifar10 workshop: test accuracy {accuracy:.3f}")
    assert accuracy > 0.5  # 10 classes: chance is 0.1; the band is easy to learn from the pickled pixels
    state = loads_weights_only(ml / "model/model.pth")
    assert state["fc3.weight"].shape == (10, 84)
    assert (ml / "output/success").exists()


def test_train_horovod_with_mpi_two_processes(docker, train_image, tmp_path):
    ml = job_tree(tmp_path / "ml", {"sagemaker_program": "train_horovod.py", "sagemaker_submit_directory": "/opt/ml/code",
                                    "sagemaker_mpi_enabled": True, "sagemaker_mpi_num_of_processes_per_host": 2,
                                    "epochs": 2, "batch-size": 32, "test-batch-size": 64}, write_mnist)
    copy_code(WORKSHOP / "horovod", ml / "code")
    # no --hostname: a plain `docker run` (README) has a random host name, and mpirun must not
    # try to reach algo-1 over ssh when the job has a single host
    code, log = run_job(docker, train_image, ml, hostname=None)
    assert code == 0, log[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} of 2 (local rank {rank}) on algo-1 hosts ['algo-1']" in log, log[-3000:]
        # DistributedSampler: each rank gets half of the 512 images, for both epochs
        assert f"rank {rank} epoch 2 samples 256" in log, log[-3000:]
    results = re.findall(r"rank (\d) test loss ([\d.]+) accuracy ([\d.]+)", log)
    assert sorted(r[0] for r in results) == ["0", "1"], log[-3000:]
    assert results[0][1:] == results[1][1:], results  # allreduce'd: both ranks report the same
    print(f"horovod workshop: {results}")
    loads_weights_only(ml / "model/model.pth")
    assert (ml / "output/success").exists()


@pytest.mark.skipif(not os.path.exists(HOST_CA), reason=f"pip in the container needs the host CA bundle {HOST_CA}")
def test_lightning_script_brought_in_by_requirements_txt(docker, train_image, tmp_path):
    ml = job_tree(tmp_path / "ml", {"sagemaker_program": "train_lightning.py", "sagemaker_submit_directory": "/opt/ml/code",
                                    "epochs": 2, "batch-size": 32, "lr": 0.003}, write_mnist)
    copy_code(WORKSHOP / "lightning", ml / "code")
    pinned = (WORKSHOP / "lightning/requirements.txt").read_text().split("==")[1].strip()
    code, log = run_job(docker, train_image, ml, env={"PIP_CERT": HOST_CA}, mounts=[(HOST_CA, HOST_CA)])
    assert code == 0, log[-4000:]
    assert f"lightning {pinned}; epochs 2 batch size 32 lr 0.003" in log, log[-3000:]
    assert "trained 2 epochs" in log, log[-3000:]
    print(re.search(r"trained .*", log).group(0))
    loads_weights_only(ml / "model/model.pth")
    assert torch.load(ml / "model/model.ckpt", weights_only=True)["state_dict"].keys() == \
        {"net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"}
    assert (ml / "output/success").exists()
