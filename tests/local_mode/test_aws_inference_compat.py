"""AWS's own integration tests of its PyTorch serving toolkit, ported: a model.tar.gz that
passes them on AWS's PyTorch inference container serves the same way on ours, as shipped
(`serve`, with the environment SageMaker SDK v2 sets).

The originals are aws/sagemaker-pytorch-inference-toolkit's test/integration: local/ (SDK v2
local mode, and a plain `docker run` for the multi-model endpoint) and the CPU cases of
sagemaker/ (real endpoints there; SDK v2 local mode here). The model scripts in aws_inference/
are our own, written to do what AWS's test resources do (no AWS code or resource is copied);
the weights are random, seeded, and written at test time (weights_only-loadable state_dicts
and TorchScript files); the photos are the repo's own (samples/photos) instead of AWS's
downloaded cat.jpg. Requests go through SDK v2's Predictor with its own serializers and
deserializers wherever AWS's do, and every assertion of AWS's is kept.

Each class, the AWS test it ports, and what was changed to port it:

- TestMnistServing: local/test_mnist_serving.py.
  - test_serve_json, test_serve_npy: an MNIST-style net whose model_fn returns
    DataParallel(Net()) loaded from torch_model.pth without eval(); code/requirements.txt asks
    for einops (AWS's for transformers), which the script imports. A batch of 300 JSON / NPY in;
    JSON, CSV and NPY out; shape (300, 10). Beyond AWS's: the same batch sent twice gets the same
    answer (the default predict_fn serves a train-mode model in eval mode).
  - test_serve_csv: the 1-d net (flat rows of 784). AWS's test sets no serializer, so the
    PyTorchPredictor's default NumpySerializer sends the (300, 784) tensor as NPY, not CSV: kept.
    Beyond AWS's: the same rows sent as text/csv with SDK v2's CSVSerializer.
  - test_serving_calls_model_fn_once: 2 workers, model_fn once per worker process (the marker
    goes to the temp dir when the model dir is not writable: aws_inference/call_model_fn_once).
  - not ported: test_serve_cpu_model_on_gpu (GPU only).
- TestDefaultInference: sagemaker/test_default_inference.py. ResNet-18 (torchvision, random
  weights) saved with torch.jit.save as model.pt (scripted) and, for the "any model name" case
  (GPU-only at AWS, run here on CPU), traced as traced_resnet18.pt; code/resnet18.py has only a
  transform_fn (SAGEMAKER_PROGRAM=resnet18.py): the server's default model_fn must find the file.
  A JPEG as application/octet-stream in (through Predictor, of which AWS's RealTimePredictor is
  v2's deprecated alias: IdentitySerializer, BytesDeserializer); 1,000 probabilities out.
- TestMnistInductor: sagemaker/test_mnist_inductor.py, CPU case: model_fn returns
  torch.compile(DataParallel(Net())); 100 random images as NPY in; shape (100, 10) out.
- TestMultiModelEndpointLocal: local/test_multi_model_endpoint_local.py. One container for the
  class, as AWS's: `docker run -v <resnet18>:/resnet18 -v <traced_resnet18>:/traced_resnet18
  -e SAGEMAKER_MULTI_MODEL=true IMAGE serve` (bound to 127.0.0.1 on a free port instead of
  8080), each folder an unpacked model (TorchScript + code/inference.py with the transform_fn);
  the /models API's exact JSON and status codes (200, 404, 409). The tests depend on each
  other's order, as AWS's do.

How the SDK is driven here, and why:
- `PyTorchModel(entry_point=<script name>, source_dir=<the model's code/ folder>)`: AWS passes
  the script's full path with no source_dir; with local code (local mode without S3), SDK v2
  then sets SAGEMAKER_PROGRAM to that host path instead of the file name (with S3, as AWS ran
  it, the name). The SDK repacks model.tar.gz with source_dir as code/ either way.
- `code_location` names a bucket that local code never uses: without it the SDK asks STS for
  the session's default bucket, which needs an AWS account.
- `deploy(..., wait=False)`: local mode's create_endpoint already returns only once /ping
  answers 200; wait=True adds the SDK's fixed 30 s poll sleep and nothing else.
- pip and PyPI: the requirements case installs from PyPI inside the container, which here is
  reached only with the host's CA bundle. Local mode cannot add a mount (the compose file it
  writes sets each service's volumes itself), so the bundle is copied into the model's code/
  folder (source_dir: repacked into model.tar.gz's code/, and mounted at /opt/ml/code) and
  PIP_CERT=/opt/ml/model/code/host-ca.crt is set with PyTorchModel(env=...). Where the host
  has no such bundle, pip uses the image's own.
- Local mode's runtime client never checks the HTTP status: an error answer would reach the
  deserializer as if it were the model's. Each deserializer is wrapped so that a non-2xx answer
  fails the test with its status and body (the same Accept is sent, the same parser reads a 2xx
  answer). Each endpoint's server log (its last 60 lines) is printed when the endpoint is
  deleted: pytest shows it with a failing test.
"""
import contextlib
import io
import json
import os
import runpy
import shutil
import tarfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests

from support.docker import run_docker

SCRIPTS = Path(__file__).parent / "aws_inference"
PHOTOS = Path(__file__).resolve().parents[2] / "samples" / "photos"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
CODE_LOCATION = "s3://byoc-local-code-unused/code"   # never used with local code (docstring)
BATCH = 300          # AWS's: the largest batch under the 5 MB body limit of its day
TIMEOUT = 600        # seconds per test, on 2 busy cores
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# -- model folders and weights --------------------------------------------------------------


def readable(root: Path) -> None:
    """The serving image runs as uid 1000: folders 0755, files 0644."""
    root.chmod(0o755)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def model_folder(root: Path, scripts: Path, files: dict) -> Path:
    """root/: the given files ({name: source path}) beside code/ with the scripts of `scripts`."""
    (root / "code").mkdir(parents=True)
    for script in scripts.iterdir():
        if script.is_file():
            shutil.copy(script, root / "code" / script.name)
    for name, source in files.items():
        shutil.copyfile(source, root / name)
    readable(root)
    return root


def pack(folder: Path, tar_path: Path) -> str:
    """folder as model.tar.gz (its root included, 0755: the SDK's repack keeps its mode)."""
    tar_path.parent.mkdir(parents=True)
    with tarfile.open(tar_path, "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=".")
    readable(tar_path.parent)   # local mode extracts it there and mounts that folder as /opt/ml/model
    return f"file://{tar_path}"


def mnist_batch(n: int, seed: int = 0) -> np.ndarray:
    """n MNIST-sized images, float32 (n, 1, 28, 28), as AWS's loader gives them: pixels in
    [0, 1] normalized with MNIST's mean and std (random pixels here)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28)).astype(np.float32) / 255
    return ((pixels - MNIST_MEAN) / MNIST_STD).astype(np.float32)


@pytest.fixture(scope="module")
def mnist_weights(tmp_path_factory):
    """torch_model.pth: the state_dict of DataParallel(Net()), random and seeded (every mnist
    script here has the same parameters: Net is taken from the one that needs only torch)."""
    import torch

    net = runpy.run_path(str(SCRIPTS / "mnist_1d" / "mnist_1d.py"))["Net"]   # no __pycache__ left in the repo
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("aws-mnist-weights") / "torch_model.pth"
    torch.save(torch.nn.DataParallel(net()).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def resnet18_files(tmp_path_factory):
    """{"scripted": model.pt, "traced": traced_resnet18.pt}: one seeded random ResNet-18, saved
    with torch.jit.save after torch.jit.script and after torch.jit.trace."""
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    out = tmp_path_factory.mktemp("aws-resnet18")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # torch deprecates TorchScript; AWS's users still ship it
        torch.jit.save(torch.jit.script(net), out / "model.pt")
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 224, 224)), out / "traced_resnet18.pt")
    return {"scripted": out / "model.pt", "traced": out / "traced_resnet18.pt"}


# -- SDK v2 local endpoints -----------------------------------------------------------------


class StatusChecked:
    """A deserializer that first checks the answer's HTTP status (local mode's runtime client
    does not), then lets the SDK's own deserializer read a 2xx body."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def ACCEPT(self):  # noqa: N802  (the SDK's name)
        return self.inner.ACCEPT

    def deserialize(self, stream, content_type):
        status, body = stream.status, stream.read()
        stream.close()
        assert 200 <= status < 300, f"the endpoint answered {status}: {body[:2000]!r}"
        return self.inner.deserialize(io.BytesIO(body), content_type)


def print_server_logs(containers, before: set, lines: int = 60) -> None:
    """The last lines of the log of each endpoint container started since `before`: shown with
    a failing test (local mode's own stream of it can stop short of the last lines)."""
    for c in containers():
        if c["id"] not in before:
            logs = run_docker("logs", "--tail", str(lines), c["id"], check=False)
            print(f"--- {c['name']}: last {lines} lines of the server log ---\n{logs.stdout}{logs.stderr}")


@pytest.fixture
def deploy(make_session, free_port, serve_image, role, tmp_path, sdk_containers):
    """deploy(scripts, entry_point, files, **PyTorchModel args) -> the predictor of a local
    endpoint serving model.tar.gz = `files` + code/ (the scripts of aws_inference/<scripts>);
    deleted after the test, and its server log printed (pytest shows it when the test fails)."""
    from sagemaker.pytorch import PyTorchModel

    with contextlib.ExitStack() as stack:
        def run(scripts, entry_point, files, extra_code=None, **model_args):
            stack.callback(print_server_logs, sdk_containers, {c["id"] for c in sdk_containers()})
            root = tmp_path / scripts
            folder = model_folder(root / "model", SCRIPTS / scripts, files)
            for name, source in (extra_code or {}).items():
                shutil.copyfile(source, folder / "code" / name)
                (folder / "code" / name).chmod(0o644)
            model = PyTorchModel(
                model_data=pack(folder, root / "artifact" / "model.tar.gz"), role=role,
                entry_point=entry_point, source_dir=str(folder / "code"), image_uri=serve_image,
                code_location=CODE_LOCATION, sagemaker_session=make_session(serving_port=free_port()),
                **model_args)
            predictor = model.deploy(initial_instance_count=1, instance_type="local", wait=False)
            stack.callback(predictor.delete_endpoint)
            return predictor

        yield run


def photo_bytes(name: str = "grass.jpg") -> bytearray:
    return bytearray((PHOTOS / name).read_bytes())   # AWS sends a bytearray too


# -- local/test_mnist_serving.py ---------------------------------------------------------------


def serializer_for(content_type):
    from sagemaker import serializers

    return {"application/json": serializers.JSONSerializer(), "text/csv": serializers.CSVSerializer(),
            "application/x-npy": serializers.NumpySerializer()}[content_type]


def deserializer_for(accept):
    from sagemaker import deserializers

    return StatusChecked({"application/json": deserializers.JSONDeserializer(),
                          "text/csv": deserializers.CSVDeserializer(),
                          "application/x-npy": deserializers.NumpyDeserializer()}[accept])


ACCEPTS = ("application/json", "text/csv", "application/x-npy")


@pytest.fixture
def mnist_predictor(deploy, mnist_weights):
    """The mnist model with code/requirements.txt (einops), served as mnist.py."""
    env, extra = {}, {}
    if os.path.exists(HOST_CA):   # PyPI from inside the container (module docstring)
        env, extra = {"PIP_CERT": "/opt/ml/model/code/host-ca.crt"}, {"host-ca.crt": HOST_CA}
    return deploy("mnist", "mnist.py", {"torch_model.pth": mnist_weights}, extra_code=extra, env=env)


@pytest.mark.timeout(TIMEOUT)
class TestMnistServing:
    def test_serve_json(self, mnist_predictor):
        self.assert_predictions(mnist_predictor, "application/json", mnist_batch(BATCH))

    def test_serve_npy(self, mnist_predictor):
        data = mnist_batch(BATCH)
        self.assert_predictions(mnist_predictor, "application/x-npy", data)
        # beyond AWS's test: model_fn returned the model in training mode (dropout on); the
        # default predict_fn serves it in eval mode, so the same batch gets the same answer
        mnist_predictor.deserializer = deserializer_for("application/x-npy")
        first, again = mnist_predictor.predict(data), mnist_predictor.predict(data)
        assert np.allclose(first, again, atol=1e-4), f"answers differ by up to {np.abs(first - again).max()}"

    def test_serve_csv(self, deploy, mnist_weights):
        import torch

        predictor = deploy("mnist_1d", "mnist_1d.py", {"torch_model.pth": mnist_weights})
        rows = torch.from_numpy(mnist_batch(BATCH)).view(BATCH, -1)
        for accept in ACCEPTS:   # as AWS's: the predictor's default serializer, NPY
            predictor.deserializer = deserializer_for(accept)
            assert np.asarray(predictor.predict(rows)).shape == (BATCH, 10), accept
        # beyond AWS's test: the same rows as text/csv
        predictor.serializer = serializer_for("text/csv")
        for accept in ACCEPTS:
            predictor.deserializer = deserializer_for(accept)
            assert np.asarray(predictor.predict(rows.numpy())).shape == (BATCH, 10), f"text/csv -> {accept}"

    def test_serving_calls_model_fn_once(self, deploy, mnist_weights):
        from sagemaker import deserializers

        predictor = deploy("call_model_fn_once", "call_model_fn_once.py", {"torch_model.pth": mnist_weights},
                           model_server_workers=2)
        predictor.deserializer = StatusChecked(deserializers.BytesDeserializer())
        for _ in range(3):   # more requests than workers: a worker answers twice
            assert predictor.predict(b"input") == b"output"

    @staticmethod
    def assert_predictions(predictor, content_type, data):
        predictor.serializer = serializer_for(content_type)
        for accept in ACCEPTS:
            predictor.deserializer = deserializer_for(accept)
            output = predictor.predict(data)
            assert np.asarray(output).shape == (BATCH, 10), f"{content_type} -> {accept}"


# -- sagemaker/test_default_inference.py (CPU, in local mode) ---------------------------------


@pytest.mark.timeout(TIMEOUT)
class TestDefaultInference:
    def test_default_inference_cpu(self, deploy, resnet18_files):
        self.assert_default_inference(deploy, {"model.pt": resnet18_files["scripted"]})

    def test_default_inference_any_model_name(self, deploy, resnet18_files):
        self.assert_default_inference(deploy, {"traced_resnet18.pt": resnet18_files["traced"]})

    @staticmethod
    def assert_default_inference(deploy, files):
        from sagemaker.predictor import Predictor

        predictor = deploy("resnet18", "resnet18.py", files, predictor_cls=Predictor)
        predictor.deserializer = StatusChecked(predictor.deserializer)   # BytesDeserializer
        response = predictor.predict(photo_bytes())
        result = json.loads(response.decode())
        assert len(result) == 1000


# -- sagemaker/test_mnist_inductor.py (CPU, in local mode) ------------------------------------


@pytest.mark.timeout(TIMEOUT)
class TestMnistInductor:
    def test_mnist_cpu_inductor(self, deploy, mnist_weights):
        predictor = deploy("inductor", "mnist.py", {"torch_model.pth": mnist_weights})
        predictor.deserializer = StatusChecked(predictor.deserializer)   # PyTorchPredictor's: NPY
        batch_size = 100
        data = np.random.default_rng(0).random((batch_size, 1, 28, 28)).astype(np.float32)
        output = predictor.predict(data)
        assert output.shape == (batch_size, 10)


# -- local/test_multi_model_endpoint_local.py ---------------------------------------------------


class MultiModelContainer:
    """The MME container's HTTP API, as AWS's test calls it: (status, the JSON body)."""

    def __init__(self, name: str, base: str):
        self.name, self.base = name, base

    def log(self, lines: int = 40) -> str:
        logs = run_docker("logs", "--tail", str(lines), self.name, check=False)
        return f"\n--- server log (last {lines} lines) ---\n{logs.stdout}{logs.stderr}"

    def call(self, method: str, path: str, **kwargs):
        response = requests.request(method, self.base + path, timeout=120, **kwargs)
        try:
            return response.status_code, response.json()
        except ValueError:
            raise AssertionError(f"{method} /{path}: {response.status_code}, not JSON: "
                                 f"{response.content[:500]!r}{self.log()}") from None

    def list_models(self):
        return self.call("GET", "models")

    def load(self, spec: dict):
        return self.call("POST", "models", data=json.dumps(spec), headers={"Content-Type": "application/json"})

    def unload(self, name: str):
        return self.call("DELETE", f"models/{name}")

    def invoke(self, name: str, data, content_type="application/octet-stream"):
        return self.call("POST", f"models/{name}/invoke", data=data, headers={"Content-Type": content_type})


@pytest.fixture(scope="module")
def mme(serve_image, free_port, tmp_path_factory, resnet18_files):
    """One multi-model container for the class, with the two model folders mounted as AWS's test
    mounts them; removed at the end."""
    root = tmp_path_factory.mktemp("aws-mme")
    resnet18 = model_folder(root / "resnet18", SCRIPTS / "resnet18", {"model.pt": resnet18_files["scripted"]})
    traced = model_folder(root / "traced_resnet18", SCRIPTS / "resnet18",
                          {"traced_resnet18.pt": resnet18_files["traced"]})
    for folder in (resnet18, traced):   # a multi-model endpoint's user code is code/inference.py
        (folder / "code" / "resnet18.py").rename(folder / "code" / "inference.py")
    name, port = f"byoc-aws-compat-mme-{uuid.uuid4().hex[:8]}", free_port()
    run_docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
               "-v", f"{resnet18}:/resnet18", "-v", f"{traced}:/traced_resnet18",
               "-e", "SAGEMAKER_MULTI_MODEL=true", serve_image, "serve")
    try:
        container = MultiModelContainer(name, f"http://127.0.0.1:{port}/")
        # as AWS's fixture: wait (up to 30 s) until /ping answers at all; test_ping checks it is 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(container.base + "ping", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.5)   # the server is starting
        yield container
    finally:
        run_docker("rm", "-f", name, check=False)


@pytest.mark.timeout(TIMEOUT)
class TestMultiModelEndpointLocal:
    def test_ping(self, mme):
        response = requests.get(mme.base + "ping", timeout=10)
        assert response.status_code == 200, f"{response.status_code} {response.text[:500]}{mme.log()}"

    def test_list_models_empty(self, mme):
        code, models = mme.list_models()
        assert code == 200, models
        assert models["models"] == []

    def test_load_models(self, mme):
        code1, content1 = mme.load({"model_name": "resnet18", "url": "/resnet18"})
        assert code1 == 200, f"{content1}{mme.log()}"
        assert content1["status"] == 'Model "resnet18" Version: 1.0 registered with 1 initial workers'

        code2, content2 = mme.list_models()
        assert code2 == 200
        assert content2["models"] == [{"modelName": "resnet18", "modelUrl": "/resnet18"}]

        code3, content3 = mme.load({"model_name": "traced_resnet18", "url": "/traced_resnet18"})
        assert code3 == 200, f"{content3}{mme.log()}"
        assert content3["status"] == 'Model "traced_resnet18" Version: 1.0 registered with 1 initial workers'

        code4, content4 = mme.list_models()
        assert code4 == 200
        assert content4["models"] == [
            {"modelName": "resnet18", "modelUrl": "/resnet18"},
            {"modelName": "traced_resnet18", "modelUrl": "/traced_resnet18"},
        ]

    def test_unload_models(self, mme):
        code1, content1 = mme.unload("resnet18")
        assert code1 == 200, f"{content1}{mme.log()}"
        assert content1["status"] == 'Model "resnet18" unregistered'

        code2, content2 = mme.list_models()
        assert code2 == 200
        assert content2["models"] == [{"modelName": "traced_resnet18", "modelUrl": "/traced_resnet18"}]

    def test_load_non_existing_model(self, mme):
        code, content = mme.load({"model_name": "banana", "url": "/banana"})
        assert code == 404, content

    def test_unload_non_existing_model(self, mme):
        code, content = mme.unload("resnet18")   # unloaded by test_unload_models
        assert code == 404, content

    def test_load_model_multiple_times(self, mme):
        code, content = mme.load({"model_name": "traced_resnet18", "url": "traced_resnet18"})   # still loaded
        assert code == 409, content

    def test_invocation(self, mme):
        mme.load({"model_name": "resnet18", "url": "/resnet18"})   # as AWS's: its answer is not checked
        payload = photo_bytes()

        code1, predictions1 = mme.invoke("resnet18", payload)
        assert code1 == 200, f"{predictions1}{mme.log()}"
        assert len(predictions1) == 1000

        code2, predictions2 = mme.invoke("traced_resnet18", payload)
        assert code2 == 200, f"{predictions2}{mme.log()}"
        assert len(predictions2) == 1000
