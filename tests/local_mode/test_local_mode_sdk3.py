"""The images under SageMaker Python SDK v3's local mode (`sagemaker` 3.x: ModelTrainer with
Mode.LOCAL_CONTAINER, and sagemaker.core's LocalSession for serving), as a new user runs them.

Runs with .venv-sdk3 (./build.sh test sets it up); fake credentials, local folders, no AWS
call (conftest.py). What v3 does differently from v2, and what these tests pin down:

- without SourceCode the image's own entrypoint (tini + `train`) runs the job; hyperparameters
  arrive as plain strings ("32", not "\\"32\\""), which train decodes as v2's;
- with SourceCode the SDK replaces the entrypoint with `/bin/bash -c ".../sm_train.sh"`: its own
  drivers (bash, python3, pip, torchrun or mpirun from PATH) run the script; `train` never runs,
  so no `success` file, no SM_CHECKPOINT_DIR, and the failure file holds the driver's traceback;
- a stop signal (spot interruption, `docker stop`) goes to PID 1, the SDK's bash, which ignores
  it: the user's script never sees SIGTERM and is killed when the grace period ends. The v2-style
  route (sagemaker_program / sagemaker_submit_directory hyperparameters, the source folder as a
  channel) keeps `train` in charge, and with it the signal relay and the failure reason;
- resourceconfig.json names the interface "ethwe", which the containers lack (train.netif);
- local hosts are algo-1, algo-2 (v2: algo-1-<random>); artifacts land in
  <local_container_root>/compressed_artifacts/{model,output}.tar.gz.
"""
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from test_local_mode import members, read_member  # the v2 tests' tar helpers

pytestmark = pytest.mark.local_mode_v3

CLASSES = {"brick", "grass", "gravel"}
BUILTIN = {"arch": "resnet18", "image-size": "64", "epochs": "1", "batch-size": "16",
           "lr": "0.05", "val-fraction": "0.2", "seed": "0"}
JOB_TIMEOUT = 900  # seconds, on 2 busy cores


@pytest.fixture(scope="module", autouse=True)
def v3_env(sm_env):
    # v3 checks the role's IAM permissions before a job; there is no IAM here
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
        yield


@pytest.fixture
def job_root(container_root):
    """A local_container_root of its own for each job, under the session's container_root
    (whose compose containers conftest.py removes after each test)."""
    root = container_root / f"v3-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    return root


def model_trainer(image, root, role, count=1, **kwargs):
    from sagemaker.train import ModelTrainer
    from sagemaker.core.training.configs import Compute
    from sagemaker.train.model_trainer import Mode

    return ModelTrainer(training_image=image, role=role, training_mode=Mode.LOCAL_CONTAINER,
                        compute=Compute(instance_type="local", instance_count=count),
                        local_container_root=str(root), base_job_name="byoc-v3", **kwargs)


def channel(name, path):
    from sagemaker.core.training.configs import InputData

    return InputData(channel_name=name, data_source=str(path))


def artifacts(root):
    return root / "compressed_artifacts" / "model.tar.gz", root / "compressed_artifacts" / "output.tar.gz"


# -- the built-in trainer (no SourceCode: the image's own `train`) ----------------------------


@pytest.fixture(scope="module")
def builtin_model(v3_env, train_image, container_root, repo_root):
    """The built-in trainer on samples/textures, one host; returns (model.tar.gz, output.tar.gz)."""
    root = container_root / "v3-builtin"
    root.mkdir()
    trainer = model_trainer(train_image, root, "arn:aws:iam::111111111111:role/SageMakerRole",
                            hyperparameters=BUILTIN)
    trainer.train(input_data_config=[channel("train", repo_root / "samples/textures")])
    return artifacts(root)


@pytest.mark.timeout(JOB_TIMEOUT)
def test_builtin_trainer_writes_the_model_artifact(builtin_model):
    model, output = builtin_model
    assert {"model.pt", "model.json", "code/inference.py"} <= members(model)
    spec = json.loads(read_member(model, "model.json"))
    assert spec["arch"] == "resnet18" and set(spec["classes"]) == CLASSES and spec["input_size"] == [3, 64, 64]
    assert "success" in members(output) and "failure" not in members(output)


@pytest.mark.timeout(JOB_TIMEOUT)
def test_local_session_serves_the_trained_model(builtin_model, serve_image, role, repo_root, free_port,
                                                sdk_containers, container_root):
    """sagemaker.core's LocalSession: create_model (file:// model.tar.gz), endpoint config,
    endpoint, invoke with a real photo, delete: the container stops, exit 0."""
    from sagemaker.core.local import LocalSession

    session = LocalSession()
    session.config = {"local": {"local_code": True, "container_root": str(container_root),
                                "serving_port": free_port()}}
    client, runtime = session.sagemaker_client, session.sagemaker_runtime_client
    before = {c["id"] for c in sdk_containers()}
    name = f"byoc-v3-{uuid.uuid4().hex[:6]}"
    client.create_model(ModelName=name, PrimaryContainer={"Image": serve_image, "Environment": {},
                                                          "ModelDataUrl": f"file://{builtin_model[0]}"})
    client.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1, "InstanceType": "local"}])
    started = time.monotonic()
    client.create_endpoint(EndpointName=name, EndpointConfigName=name)
    try:
        assert client.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
        print(f"endpoint InService after {time.monotonic() - started:.1f} s")
        answer = runtime.invoke_endpoint(EndpointName=name, ContentType="image/jpeg", Accept="application/json",
                                         Body=(repo_root / "samples/photos/grass.jpg").read_bytes())
        predictions = json.loads(answer["Body"].read())["predictions"]
        assert predictions and {p["label"] for p in predictions} <= CLASSES, predictions
        assert all(0.0 <= p["probability"] <= 1.0 for p in predictions)
        running = [c for c in sdk_containers() if c["id"] not in before and c["running"]]
        assert len(running) == 1, running
    finally:
        client.delete_endpoint(EndpointName=name)
        client.delete_endpoint_config(EndpointConfigName=name)
        client.delete_model(ModelName=name)
    after = [c for c in sdk_containers() if c["id"] not in before]
    assert after and not [c for c in after if c["running"]], after
    assert all(c["exit_code"] == 0 for c in after), after  # serve drained and exited 0


@pytest.mark.timeout(JOB_TIMEOUT)
def test_builtin_trainer_on_two_hosts_with_v3s_ethwe(train_image, job_root, role, repo_root, capfd):
    """v3 writes network_interface_name "ethwe"; train falls back to the interface that routes
    to algo-1 (eth0) on both hosts, and the DDP job runs as one job of two nodes."""
    trainer = model_trainer(train_image, job_root, role, count=2,
                            hyperparameters={**BUILTIN, "sagemaker_torch_distributed_enabled": "true"})
    trainer.train(input_data_config=[channel("train", repo_root / "samples/textures")])
    log = capfd.readouterr().out
    assert log.count("network interface 'ethwe'") == 2 and "using eth0" in log, log[-3000:]
    assert log.count("--nnodes 2") == 2, log[-3000:]
    model, output = artifacts(job_root)
    assert set(json.loads(read_member(model, "model.json"))["classes"]) == CLASSES
    assert "success" in members(output) and "failure" not in members(output)


# -- your own script ---------------------------------------------------------------------------

TRAIN_PY = '''\
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int)
parser.add_argument("--fail", default="no")
args = parser.parse_args()
if args.fail == "yes":
    raise ValueError("byoc-v3: the data has no label column")
import byoc_probe  # from requirements.txt (a local wheel), when the job has one
seen = {"args": vars(args), "probe": byoc_probe.VALUE, "pid": os.getpid(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("SM_")}}
with open(os.path.join(os.environ["SM_MODEL_DIR"], "seen.json"), "w") as f:
    json.dump(seen, f)
'''


def make_source(root, requirements=True):
    """src/ with train.py, and requirements.txt naming a wheel in src/wheels (installed offline)."""
    src = root.parent / f"src-{root.name}"
    (src / "wheels").mkdir(parents=True)
    (src / "train.py").write_text(TRAIN_PY)
    probe = root.parent / f"probe-{root.name}"
    (probe / "byoc_probe").mkdir(parents=True)
    (probe / "byoc_probe" / "__init__.py").write_text("VALUE = 'installed from a local wheel'\n")
    (probe / "pyproject.toml").write_text('[project]\nname = "byoc-probe"\nversion = "0.1"\n'
                                          '[build-system]\nrequires = ["setuptools"]\n'
                                          'build-backend = "setuptools.build_meta"\n')
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(src / "wheels"), str(probe)], check=True)
    if requirements:
        (src / "requirements.txt").write_text("--no-index\n--find-links wheels\nbyoc-probe==0.1\n")
    return src


@pytest.mark.timeout(JOB_TIMEOUT)
def test_source_code_job_with_requirements_from_a_local_wheel(train_image, job_root, role):
    from sagemaker.core.training.configs import SourceCode

    src = make_source(job_root)
    # v3 installs requirements.txt only when SourceCode names it (v2 and train: when present)
    trainer = model_trainer(train_image, job_root, role, hyperparameters={"epochs": 3},
                            source_code=SourceCode(source_dir=str(src), entry_script="train.py",
                                                   requirements="requirements.txt"))
    trainer.train(input_data_config=[channel("train", src / "wheels")])
    model, output = artifacts(job_root)
    seen = json.loads(read_member(model, "seen.json"))
    assert seen["args"] == {"epochs": 3, "fail": "no"}
    assert seen["probe"] == "installed from a local wheel"
    assert seen["env"]["SM_CHANNEL_TRAIN"] == "/opt/ml/input/data/train"
    # the SDK's drivers, not train, ran it: no SM_CHECKPOINT_DIR, no success file
    assert "SM_CHECKPOINT_DIR" not in seen["env"]
    assert "success" not in members(output)


@pytest.mark.timeout(JOB_TIMEOUT)
def test_source_code_job_failure(train_image, job_root, role, capfd):
    from sagemaker.core.training.configs import SourceCode

    src = make_source(job_root, requirements=False)
    trainer = model_trainer(train_image, job_root, role, hyperparameters={"fail": "yes"},
                            source_code=SourceCode(source_dir=str(src), entry_script="train.py"))
    with pytest.raises(RuntimeError, match="exited with code"):
        trainer.train(input_data_config=[channel("train", src / "wheels")])
    assert "ValueError: byoc-v3: the data has no label column" in capfd.readouterr().out
    failure = read_member(artifacts(job_root)[1], "failure")
    # the SDK's driver writes its own CalledProcessError traceback: the image does not run here
    assert "CalledProcessError" in failure and "byoc-v3: the data has no label column" not in failure, failure


DDP_PY = Path(__file__).resolve().parents[1] / "scripts" / "ddp_sum.py"


@pytest.mark.timeout(JOB_TIMEOUT)
def test_source_code_with_torchrun_on_two_hosts(train_image, job_root, role, capfd):
    from sagemaker.core.training.configs import SourceCode
    from sagemaker.train.distributed import Torchrun

    src = job_root.parent / f"src-{job_root.name}"
    src.mkdir()
    shutil.copy(DDP_PY, src / "ddp.py")
    trainer = model_trainer(train_image, job_root, role, count=2, distributed=Torchrun(),
                            source_code=SourceCode(source_dir=str(src), entry_script="ddp.py"))
    trainer.train(input_data_config=[channel("train", src)])
    log = capfd.readouterr().out
    assert re.search(r"rank 0 of 2 on \S+ sum 3", log) and re.search(r"rank 1 of 2 on \S+ sum 3", log), log[-3000:]
    assert read_member(artifacts(job_root)[0], "result.txt") == "3"


# -- train in charge of your script under v3 (v2's hyperparameters) ----------------------------


def train_in_charge(image, root, role, program, **hyperparameters):
    """README's route: no SourceCode; the source folder is the `code` channel and v2's
    sagemaker_program / sagemaker_submit_directory name it, so the image's `train` runs it."""
    return model_trainer(image, root, role, hyperparameters={
        "sagemaker_program": program, "sagemaker_submit_directory": "/opt/ml/input/data/code",
        **hyperparameters})


@pytest.mark.timeout(JOB_TIMEOUT)
def test_train_in_charge_of_a_script_under_v3(train_image, job_root, role):
    src = make_source(job_root)
    trainer = train_in_charge(train_image, job_root, role, "train.py", epochs="3")
    trainer.train(input_data_config=[channel("train", src / "wheels"), channel("code", src)])
    model, output = artifacts(job_root)
    seen = json.loads(read_member(model, "seen.json"))
    assert seen["args"] == {"epochs": 3, "fail": "no"}
    assert seen["probe"] == "installed from a local wheel"  # train installed requirements.txt
    assert seen["env"]["SM_CHECKPOINT_DIR"] == "/opt/ml/checkpoints"
    assert "success" in members(output)


@pytest.mark.timeout(JOB_TIMEOUT)
def test_train_in_charge_puts_the_reason_first(train_image, job_root, role):
    src = make_source(job_root, requirements=False)
    trainer = train_in_charge(train_image, job_root, role, "train.py", fail="yes")
    with pytest.raises(RuntimeError, match="exited with code"):
        trainer.train(input_data_config=[channel("train", src / "wheels"), channel("code", src)])
    failure = read_member(artifacts(job_root)[1], "failure")
    assert failure.splitlines()[0].endswith("ValueError: byoc-v3: the data has no label column"), failure


# -- what a stop signal (spot interruption) does under each route ------------------------------

SPOT_PY = '''\
import os, signal, sys, time
from byoc.checkpoint import TerminationFlag  # the image's spot helper, as README shows it
stop = TerminationFlag().install()
open("/tmp/ready", "w").close()
deadline = time.monotonic() + 600
while not stop.requested and time.monotonic() < deadline:
    time.sleep(0.2)  # one training step
if stop.requested:  # here a real loop saves its checkpoint
    with open("/opt/ml/output/data/sigterm.txt", "w") as f:
        f.write(f"pid {os.getpid()} got {signal.Signals(stop.signum).name}")
    sys.exit(143)
'''
STOP_TIMEOUT = 20  # docker stop's grace period here (SageMaker gives 120 s)


def stop_when_ready(docker, root, seconds):
    """Wait for the job's container to run the script, then `docker stop -t` it; returns
    (seconds docker stop took, the container's exit code)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ids = subprocess.run([docker, "ps", "-q", "--filter", f"label=com.docker.compose.project.working_dir={root}"],
                             capture_output=True, text=True).stdout.split()
        if ids and subprocess.run([docker, "exec", ids[0], "test", "-f", "/tmp/ready"]).returncode == 0:
            started = time.monotonic()
            subprocess.run([docker, "stop", "-t", str(seconds), ids[0]], check=True, capture_output=True)
            took = time.monotonic() - started
            code = subprocess.run([docker, "inspect", "-f", "{{.State.ExitCode}}", ids[0]],
                                  capture_output=True, text=True).stdout.strip()
            return took, int(code)
        time.sleep(1)  # waiting for the container to start
    raise AssertionError("the job's container never ran the script")


def run_and_stop(trainer, docker, root, inputs):
    errors = []

    def train():
        try:
            trainer.train(input_data_config=inputs)
        except Exception as error:  # noqa: BLE001 - a stopped job fails; we only want to know how
            errors.append(error)

    thread = threading.Thread(target=train)
    thread.start()
    took, code = stop_when_ready(docker, root, STOP_TIMEOUT)
    thread.join(120)
    output = root / "compressed_artifacts" / "output.tar.gz"
    got = read_member(output, "data/sigterm.txt") if "data/sigterm.txt" in members(output) else None
    print(f"docker stop -t {STOP_TIMEOUT}: {took:.1f} s, exit code {code}, script saw: {got}")
    return took, code, got


@pytest.mark.timeout(JOB_TIMEOUT)
def test_sigterm_never_reaches_a_source_code_script(docker, train_image, job_root, role):
    """Measured: under the SDK's drivers PID 1 is bash, which ignores SIGTERM; the script is
    SIGKILLed when the grace period ends (exit 137) without ever seeing the signal."""
    from sagemaker.core.training.configs import SourceCode

    src = job_root.parent / f"src-{job_root.name}"
    src.mkdir()
    (src / "spot.py").write_text(SPOT_PY)
    trainer = model_trainer(train_image, job_root, role,
                            source_code=SourceCode(source_dir=str(src), entry_script="spot.py"))
    took, code, got = run_and_stop(trainer, docker, job_root, [channel("train", src)])
    assert got is None and code == 137, (took, code, got)
    assert took >= STOP_TIMEOUT - 1


@pytest.mark.timeout(JOB_TIMEOUT)
def test_sigterm_reaches_the_script_when_train_is_in_charge(docker, train_image, job_root, role):
    src = job_root.parent / f"src-{job_root.name}"
    src.mkdir()
    (src / "spot.py").write_text(SPOT_PY)
    trainer = train_in_charge(train_image, job_root, role, "spot.py")
    took, code, got = run_and_stop(trainer, docker, job_root, [channel("train", src), channel("code", src)])
    assert got and got.endswith("got SIGTERM"), (took, code, got)
    assert took < STOP_TIMEOUT - 5 and code == 143, (took, code)  # 128 + SIGTERM: interrupted
