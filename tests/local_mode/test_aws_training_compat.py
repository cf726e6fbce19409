"""AWS's own local-mode tests of its PyTorch training toolkit, ported: a job that passes them on
AWS's PyTorch training container runs the same way on ours.

The originals are aws/sagemaker-pytorch-training-toolkit's test/integration/local/ (and the
toolkit's error reporting, test/unit/test_train.py): each runs a script with SageMaker SDK v2's
`PyTorch` estimator, instance_type="local", against the image, and checks what lands in
model.tar.gz and output.tar.gz. Here the same jobs run against our training image, with the
fixtures of tests/local_mode/conftest.py. The job scripts in aws_training/ are our own, written
to do what AWS's resources do (no AWS code or data is copied); the data is random, in MNIST's
idx format (support.mnist_data), a few hundred samples and one epoch, so each job takes seconds.

Each test, the AWS test it ports, and what was changed to port it:

- test_mnist: test_single_machine_training.py::test_mnist. Our MNIST-style script
  (sagemaker_training's Environment, torchvision's MNIST), random data; also loads model.pth.
- test_dist_operations_path_cpu[gloo]: test_distributed_training.py::test_dist_operations_path_cpu.
  Our script; 2 hosts x 2 ranks (AWS starts one rank per CPU: the `processes-per-host`
  hyperparameter bounds it); a failing rank fails the job (AWS's script never checks its ranks'
  exit codes).
- test_cpu_nccl: test_distributed_training.py::test_cpu_nccl. Also asserts that the failure
  names NCCL: the job must fail for that reason, not another.
- test_mnist_cpu[gloo]: test_distributed_training.py::test_mnist_cpu. Unchanged in substance:
  2 hosts, no distribution setting, the script calls init_process_group(backend, rank=,
  world_size=) with env://, so MASTER_ADDR and MASTER_PORT must come from the container.
- test_requirements_file: test_requirements.py::test_requirements_file. A small pinned package
  (tabulate) instead of pyfiglet; the host's CA bundle for pip (below); also asserts that the
  pinned version is what the script imported.
- test_horovod_simple: test_horovod.py::test_horovod_simple. On CPU (instance_type "local"; AWS
  runs it on local_gpu only); the ranks also all-reduce over Horovod's CPU path.
- test_script_error_fails_the_job_with_the_reason: the toolkit's error reporting (its unit test
  test_user_script_error_raised: a script's error fails the job). In local mode: fit raises,
  and output.tar.gz holds `failure`, which names the exception.

Not ported: test_dist_operations_path_gpu_nccl (local_gpu), test_horovod_training (skipped by
AWS themselves), and the toolkit's special case that logs a script failure whose output holds
"gloo::EnforceNotMet" as a warning and reports success (AWS's workaround for a gloo error at
shutdown; our image does not special-case it: such a job fails).

pip and PyPI: the requirements job installs from PyPI inside the container, which here is
reached only with the host's CA bundle. SDK v2 local mode cannot add a mount: the compose file
it writes sets each service's `volumes` itself, after the `local: container_config` settings.
So the bundle is copied into the source dir, which local mode mounts at /opt/ml/code, and
PIP_CERT points at it through the estimator's `environment=`.
"""
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from support.mnist_data import write_random_mnist

SCRIPTS = Path(__file__).parent / "aws_training"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
JOB_TIMEOUT = 600  # seconds, on 2 busy cores


# -- helpers --------------------------------------------------------------------------------


def tar_members(path: Path) -> set:
    with tarfile.open(path) as tar:
        return {m.name.removeprefix("./") for m in tar.getmembers()}


def tar_read(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if m.name.removeprefix("./") == name:
                return tar.extractfile(m).read()
    raise AssertionError(f"{name} not in {path}: {sorted(tar_members(path))}")


def artifact(out: Path, name: str) -> Path:
    """out/**/model.tar.gz or output.tar.gz: the one the job wrote."""
    found = list(out.rglob(f"{name}.tar.gz"))
    assert len(found) == 1, f"{name}.tar.gz under {out}: {found}"
    return found[0]


def assert_files_exist(out: Path, expected: dict) -> None:
    """As AWS's helper: every named file is in <dir>.tar.gz ({'model': [...], 'output': [...]})."""
    for archive, names in expected.items():
        missing = set(names) - tar_members(artifact(out, archive))
        assert not missing, f"{archive}.tar.gz lacks {missing}"


def source_dir(tmp_path: Path, *files: str) -> Path:
    """A fresh source dir with the named aws_training/ files (local mode mounts it read-write)."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for name in files:
        shutil.copy(SCRIPTS / name, src / Path(name).name)
    return src


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """The 'training' channel: MNIST/raw idx files, 256 training and 64 test images."""
    return write_random_mnist(tmp_path_factory.mktemp("aws-mnist"), train=256, test=64)


@pytest.fixture
def job(make_session, train_image, role, tmp_path):
    """job(entry_point, src, **estimator_args) -> (estimator, output folder) after fit()
    (fit's exception propagates). Channels: channels={...}; default none."""
    from sagemaker.pytorch import PyTorch

    out = tmp_path / "out"
    out.mkdir()

    def run(entry_point, src, channels=None, **kwargs):
        estimator = PyTorch(
            entry_point=entry_point, source_dir=str(src), image_uri=train_image, role=role,
            instance_type="local", output_path=f"file://{out}", base_job_name="byoc-aws-compat",
            sagemaker_session=make_session(), **{"instance_count": 1, **kwargs},
        )
        estimator.fit(channels)
        return estimator

    run.out = out
    return run


# -- test_single_machine_training.py ------------------------------------------------------


@pytest.mark.timeout(JOB_TIMEOUT)
def test_mnist(job, tmp_path, mnist_dir):
    torch = pytest.importorskip("torch")
    job("mnist.py", source_dir(tmp_path, "mnist.py"), channels={"training": f"file://{mnist_dir}"},
        hyperparameters={"processor": "cpu", "epochs": 1, "batch-size": 32})
    assert_files_exist(job.out, {"model": ["model.pth"], "output": ["success"]})
    weights = tmp_path / "model.pth"
    weights.write_bytes(tar_read(artifact(job.out, "model"), "model.pth"))
    state = torch.load(weights, weights_only=True)
    assert state["head.2.weight"].shape == (10, 400)


# -- test_distributed_training.py ----------------------------------------------------------


@pytest.mark.timeout(JOB_TIMEOUT)
@pytest.mark.parametrize("backend", ["gloo"])
def test_dist_operations_path_cpu(job, tmp_path, capfd, backend):
    job("dist_ops.py", source_dir(tmp_path, "dist_ops.py"), instance_count=2,
        hyperparameters={"backend": backend, "processes-per-host": 2})
    assert_files_exist(job.out, {"model": ["success"], "output": ["success"]})
    log = capfd.readouterr().out
    pattern = r"rank (\d) of 4: broadcast, all_reduce, barrier, send/recv passed"
    passed = sorted(int(rank) for rank in re.findall(pattern, log))
    assert passed == [0, 1, 2, 3], log[-3000:]


@pytest.mark.timeout(JOB_TIMEOUT)
def test_cpu_nccl(job, tmp_path, mnist_dir):
    with pytest.raises(RuntimeError):
        job("mnist.py", source_dir(tmp_path, "mnist.py"), channels={"training": f"file://{mnist_dir}"},
            instance_count=2, hyperparameters={"backend": "nccl"})
    assert_files_exist(job.out, {"output": ["failure"]})
    failure = tar_read(artifact(job.out, "output"), "failure").decode()
    assert "NCCL" in failure.splitlines()[0], failure[:2000]


@pytest.mark.timeout(JOB_TIMEOUT)
@pytest.mark.parametrize("backend", ["gloo"])
def test_mnist_cpu(job, tmp_path, mnist_dir, capfd, backend):
    job("mnist.py", source_dir(tmp_path, "mnist.py"), channels={"training": f"file://{mnist_dir}"},
        instance_count=2, hyperparameters={"backend": backend, "epochs": 1, "batch-size": 32})
    assert_files_exist(job.out, {"model": ["model.pth"], "output": ["success"]})
    log = capfd.readouterr().out
    # one group of two hosts, each training on its half of the 256 images
    assert f"joined {backend} group: rank 0 of 2" in log and f"joined {backend} group: rank 1 of 2" in log, log[-3000:]
    assert log.count("epoch 1: 128 of 256 samples") == 2, log[-3000:]


# -- test_requirements.py -------------------------------------------------------------------


@pytest.mark.timeout(JOB_TIMEOUT)
@pytest.mark.skipif(not os.path.exists(HOST_CA), reason=f"pip in the container needs the host CA bundle {HOST_CA}")
def test_requirements_file(job, tmp_path):
    src = source_dir(tmp_path, "requirements/entry.py", "requirements/requirements.txt")
    shutil.copy(HOST_CA, src / "host-ca.crt")  # see the module docstring: no extra mount in local mode
    job("entry.py", src, environment={"PIP_CERT": "/opt/ml/code/host-ca.crt"})
    assert_files_exist(job.out, {"output": ["success"]})
    pinned = (SCRIPTS / "requirements/requirements.txt").read_text().split("==")[1].strip()
    assert json.loads(tar_read(artifact(job.out, "model"), "installed.json")) == {"tabulate": pinned}


# -- test_horovod.py ----------------------------------------------------------------------------


@pytest.mark.timeout(JOB_TIMEOUT)
def test_horovod_simple(job, tmp_path):
    instances, processes = 1, 2
    job("hvd_ranks.py", source_dir(tmp_path, "hvd_ranks.py"), instance_count=instances,
        hyperparameters={"sagemaker_mpi_enabled": True, "sagemaker_mpi_num_of_processes_per_host": processes})
    size = instances * processes
    model = artifact(job.out, "model")
    for rank in range(size):
        seen = json.loads(tar_read(model, f"rank-{rank}.json"))
        assert seen == {"rank": rank, "local_rank": rank % processes, "size": size,
                        "sum_of_ranks": float(sum(range(size)))}


# -- the toolkit's error reporting ------------------------------------------------------------


@pytest.mark.timeout(JOB_TIMEOUT)
def test_script_error_fails_the_job_with_the_reason(job, tmp_path, capfd):
    with pytest.raises(RuntimeError):
        job("fails.py", source_dir(tmp_path, "fails.py"))
    reason = "ValueError: aws-compat: the training channel has no label column"
    assert reason in capfd.readouterr().out
    assert_files_exist(job.out, {"output": ["failure"]})
    assert reason in tar_read(artifact(job.out, "output"), "failure").decode()
