"""The images under SageMaker local mode, driven by the SageMaker Python SDK v2
(`Estimator` / `PyTorch` / `Model.deploy` with instance_type="local"), as users and
workshop notebooks run them.

What runs here: the SDK's LocalSession with `local_code: true`, `file://` channels and
`file://` output paths, so the SDK never calls AWS (fake credentials and a region come
from conftest.py; no moto needed). The SDK writes the compose files, `docker compose up`
runs our images with the `/opt/ml` layout it mounts, packs model.tar.gz/output.tar.gz,
and serves a local endpoint from the packed model.

What cannot be tested here (no AWS account): real S3 channels and outputs (the SDK's
s3:// download/upload and a `sourcedir.tar.gz` in S3), ECR pulls, the real SageMaker
training and hosting services (their FailureReason, spot interruption, instance
networking, `local_gpu`). The differences between local mode and the cloud that a user
meets are asserted below where they touch our images:

- a failed local job raises the SDK's RuntimeError("... Process exited with code: N"),
  not UnexpectedStatusException with the FailureReason: our reason is only in the
  streamed log and in output.tar.gz's `failure` file (both asserted);
- local mode keeps docker's 64 MB /dev/shm (the cloud gives the instance's memory): the
  built-in trainer runs with it here (users can raise it with the SDK config
  `local: {container_config: {shm_size: ...}}`);
- local mode names the hosts algo-1-<suffix>, algo-2-<suffix> (the cloud: algo-1, algo-2),
  and mounts source_dir at /opt/ml/code with sagemaker_submit_directory=/opt/ml/code
  instead of an s3:// sourcedir.tar.gz;
- with instance_count=2, `compose up --abort-on-container-exit` stops the other host
  as soon as one exits: when one host finishes a few hundred ms before the other, the
  other gets SIGTERM while torchrun shuts down and exits 143 (about 1 run in 5 here), and
  its `failure` file lands in output.tar.gz beside the other's `success`; the SDK still
  reports success (compose returns the first container's code);
- the SDK leaves the stopped training and serving containers and its `sagemaker-local`
  network behind (it runs `compose up`, never `down`); the fixtures remove them;
- Model.deploy sleeps the SDK's 30 s endpoint poll before its first check, even though
  the local endpoint is up as soon as /ping answers (SDK behaviour, same in the cloud).
"""
import json
import re
import tarfile
from pathlib import Path

import pytest

CLASSES = {"brick", "grass", "gravel"}
# scripts/demo.sh's hyperparameters, shortened: the job must finish, not score
BUILTIN = {"arch": "resnet18", "image-size": "64", "epochs": "2", "batch-size": "16",
           "lr": "0.05", "val-fraction": "0.2", "seed": "0"}
JOB_TIMEOUT = 900  # seconds, on 2 busy cores


def members(tar_path):
    with tarfile.open(tar_path) as tar:
        return {m.name.removeprefix("./") for m in tar.getmembers()}


def read_member(tar_path, name):
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            if m.name.removeprefix("./") == name:
                return tar.extractfile(m).read().decode()
    raise AssertionError(f"{name} not in {tar_path}: {sorted(members(tar_path))}")


def local_path(uri):
    assert uri.startswith("file://"), uri
    return Path(uri.removeprefix("file://"))


@pytest.fixture(scope="module")
def builtin_model(make_session, tmp_path_factory, train_image, role, repo_root):
    """(a) runs once: the built-in trainer on samples/textures as a local training job.
    Returns the file:// model_data URI."""
    from sagemaker.estimator import Estimator

    out = tmp_path_factory.mktemp("lm-builtin-out")
    estimator = Estimator(
        image_uri=train_image, role=role, instance_count=1, instance_type="local",
        output_path=f"file://{out}", base_job_name="byoc-lm-builtin",
        hyperparameters=BUILTIN, sagemaker_session=make_session(),
    )
    estimator.fit({"train": f"file://{repo_root / 'samples/textures'}"})
    return estimator.model_data


@pytest.mark.timeout(JOB_TIMEOUT)
def test_builtin_training_writes_the_model_artifact(builtin_model):
    tar_path = local_path(builtin_model)
    assert tar_path.name == "model.tar.gz" and tar_path.is_file()
    assert {"model.pt", "model.json", "code/inference.py"} <= members(tar_path)
    spec = json.loads(read_member(tar_path, "model.json"))
    assert spec["arch"] == "resnet18"
    assert set(spec["classes"]) == CLASSES
    assert spec["input_size"] == [3, 64, 64]
    # the job's outcome files come back too, in output.tar.gz beside it
    output = tar_path.with_name("output.tar.gz")
    assert "success" in members(output) and "failure" not in members(output)


@pytest.mark.timeout(JOB_TIMEOUT)
def test_local_endpoint_serves_the_trained_model(builtin_model, make_session, serve_image, role,
                                                  repo_root, free_port, sdk_containers):
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    session = make_session(serving_port=free_port())
    before = {c["id"] for c in sdk_containers()}  # the training job's, when (a) ran just now
    model = Model(image_uri=serve_image, model_data=builtin_model, role=role,
                  name="byoc-lm-model", sagemaker_session=session,
                  predictor_cls=Predictor)  # without it a v2 Model.deploy returns None
    predictor = model.deploy(initial_instance_count=1, instance_type="local",
                             endpoint_name="byoc-lm-endpoint",
                             serializer=IdentitySerializer("image/jpeg"), deserializer=JSONDeserializer())
    try:
        running = [c for c in sdk_containers() if c["id"] not in before and c["running"]]
        assert len(running) == 1, running
        photo = repo_root / "samples/photos/grass.jpg"
        answer = predictor.predict(photo.read_bytes())
        labels = [p["label"] for p in answer["predictions"]]
        assert set(labels) <= CLASSES and labels, answer
        assert all(0.0 <= p["probability"] <= 1.0 for p in answer["predictions"])
    finally:
        predictor.delete_endpoint()
    after = [c for c in sdk_containers() if c["id"] not in before]
    assert not [c for c in after if c["running"]], after
    # delete_endpoint stops `compose up` (SIGTERM, docker's 10 s stop timeout) and leaves the
    # stopped container behind (compose_cleanup removes it): serve drained and exited 0
    assert all(c["exit_code"] == 0 for c in after), after


TRAIN_PY = '''\
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int)
parser.add_argument("--lr", type=float)
parser.add_argument("--run-name")
parser.add_argument("--fail", default="no")
args = parser.parse_args()
if args.fail == "yes":
    raise ValueError("byoc-lm: the data has no label column")
seen = {"args": vars(args), "argv": sys.argv[1:],
        "env": {k: v for k, v in os.environ.items() if k.startswith("SM_")},
        "channel": sorted(os.listdir(os.environ["SM_CHANNEL_TRAIN"]))}
with open(os.path.join(os.environ["SM_MODEL_DIR"], "seen.json"), "w") as f:
    json.dump(seen, f)
'''


@pytest.fixture
def script_job(make_session, train_image, role, tmp_path):
    """A PyTorch estimator in script mode: source_dir with train.py, one channel."""
    from sagemaker.pytorch import PyTorch

    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(TRAIN_PY)
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("a,b\n1,2\n")
    out = tmp_path / "out"
    out.mkdir()

    def run(**hyperparameters):
        estimator = PyTorch(
            entry_point="train.py", source_dir=str(src), image_uri=train_image, role=role,
            instance_count=1, instance_type="local", output_path=f"file://{out}",
            base_job_name="byoc-lm-script", hyperparameters=hyperparameters,
            sagemaker_session=make_session(),
        )
        estimator.fit({"train": f"file://{data}"})
        return estimator

    run.out = out
    return run


@pytest.mark.timeout(JOB_TIMEOUT)
def test_script_mode_gets_hyperparameters_and_sm_variables(script_job):
    estimator = script_job(epochs=3, lr=0.01, **{"run-name": "local run"})
    seen = json.loads(read_member(local_path(estimator.model_data), "seen.json"))
    assert seen["args"] == {"epochs": 3, "lr": 0.01, "run_name": "local run", "fail": "no"}
    env = seen["env"]
    assert env["SM_MODEL_DIR"] == "/opt/ml/model"
    assert env["SM_CHANNEL_TRAIN"] == "/opt/ml/input/data/train"
    assert seen["channel"] == ["rows.csv"]
    assert json.loads(env["SM_HPS"]) == {"epochs": 3, "lr": 0.01, "run-name": "local run"}
    # local mode names hosts algo-1-<random suffix>, the cloud algo-1: nothing may rely on the name
    hosts = json.loads(env["SM_HOSTS"])
    assert len(hosts) == 1 and hosts[0].startswith("algo-1"), hosts
    assert env["SM_CURRENT_HOST"] == hosts[0]
    assert json.loads(env["SM_NUM_GPUS"]) == 0
    assert env["SM_USER_ENTRY_POINT"] == "train.py"


@pytest.mark.timeout(JOB_TIMEOUT)
def test_failing_script_raises_with_the_reason(script_job, capfd):
    with pytest.raises(RuntimeError, match="exited with code"):
        script_job(epochs=1, fail="yes")
    # local mode has no FailureReason: the reason is in the streamed log ...
    assert "byoc-lm: the data has no label column" in capfd.readouterr().out
    # ... and in /opt/ml/output/failure, packed into output.tar.gz
    outputs = list(script_job.out.rglob("output.tar.gz"))
    assert len(outputs) == 1, outputs
    failure = read_member(outputs[0], "failure")
    assert failure.splitlines()[0].endswith("ValueError: byoc-lm: the data has no label column"), failure


@pytest.mark.timeout(JOB_TIMEOUT)
def test_two_host_builtin_ddp(make_session, train_image, role, repo_root, tmp_path, sdk_containers, capfd):
    from sagemaker.estimator import Estimator

    out = tmp_path / "out"
    out.mkdir()
    estimator = Estimator(
        image_uri=train_image, role=role, instance_count=2, instance_type="local",
        output_path=f"file://{out}", base_job_name="byoc-lm-ddp",
        hyperparameters={**BUILTIN, "epochs": "1", "sagemaker_torch_distributed_enabled": "true"},
        sagemaker_session=make_session(),
    )
    estimator.fit({"train": f"file://{repo_root / 'samples/textures'}"})
    hosts = {c["name"]: c["exit_code"] for c in sdk_containers()}
    assert len(hosts) == 2, hosts
    log = capfd.readouterr().out
    # one job of two nodes (torchrun's rendezvous), not two single-host jobs
    assert log.count("--nnodes 2") == 2, log[-3000:]
    # Local mode's `compose up --abort-on-container-exit` stops the other host the moment
    # one exits (the cloud waits for every host). The hosts wait for each other at the end
    # (train's finish line), so both exit 0: a SIGTERM never catches one still at work.
    exits = re.findall(r"([a-z0-9]+-algo-\d-[a-z0-9]+) exited with code (\d+)", log)
    assert len(exits) == 2 and {name: int(code) for name, code in exits} == hosts, (exits, hosts)
    assert [code for _, code in exits] == ["0", "0"], log[-3000:]
    assert "waiting for the other 1 host(s) to finish" in log, log[-3000:]
    tar_path = local_path(estimator.model_data)
    assert {"model.pt", "model.json", "code/inference.py"} <= members(tar_path)
    assert set(json.loads(read_member(tar_path, "model.json"))["classes"]) == CLASSES
