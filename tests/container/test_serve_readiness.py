"""/ping tells the truth: 503 while the model loads, 200 once it answers.
/execution-parameters matches the workers and payload limit in force."""
import json
import os
import subprocess
import textwrap
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.both_engines  # the same contract whichever engine serves

SLOW_MODEL = """
import json, time, torch

def model_fn(model_dir):
    time.sleep(12)          # a model that takes a while to load
    return torch.nn.Identity()

def input_fn(body, content_type):
    return torch.tensor(json.loads(body), dtype=torch.float32)

def predict_fn(data, model):
    return model(data) * 2

def output_fn(prediction, accept):
    return json.dumps(prediction.tolist())
"""


def status_of(url, data=None, headers=None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return None, b""      # not listening yet


@pytest.fixture
def slow_server(docker, serve_image, tmp_path, free_port):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(textwrap.dedent(SLOW_MODEL))
    tmp_path.chmod(0o755)
    port = free_port()
    name = f"byoc-test-ready-{port}"
    subprocess.run([docker, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
                    "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=2", "-e", "SAGEMAKER_MAX_PAYLOAD_IN_MB=20",
                    "-v", f"{tmp_path}:/opt/ml/model:ro", serve_image], check=True, capture_output=True)
    yield name, f"http://127.0.0.1:{port}"
    subprocess.run([docker, "rm", "-f", name], capture_output=True)


def test_ping_is_503_until_the_model_answers(slow_server, docker):
    name, url = slow_server
    seen = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status, _ = status_of(url + "/ping")
        seen.append(status)
        if status == 200:
            break
        time.sleep(0.5)       # a test's bounded poll, as SageMaker's health check does
    else:
        logs = subprocess.run([docker, "logs", name], capture_output=True, text=True)
        pytest.fail(f"never healthy; statuses {sorted(set(map(str, seen)))}\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")
    assert 503 in seen, f"/ping was never 503 while model_fn slept: {seen}"
    # at the first 200 the model answers at once
    status, body = status_of(url + "/invocations", data=b"[1, 2.5]", headers={"Content-Type": "application/json"})
    assert status == 200 and json.loads(body) == [2.0, 5.0]


def test_execution_parameters_follow_the_settings(slow_server):
    _, url = slow_server
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = status_of(url + "/execution-parameters")
        if status not in (None, 503):   # 503: the front door is up, TorchServe not yet
            break
        time.sleep(0.5)
    assert status == 200
    assert json.loads(body) == {"MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 20}


HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
NEEDS_EINOPS = SLOW_MODEL.replace("time.sleep(12)", "import einops; time.sleep(0)")


def run_serve(docker, image, model_dir, *args, timeout=180):
    started = time.monotonic()
    out = subprocess.run([docker, "run", "--rm", "-v", f"{model_dir}:/opt/ml/model:ro", *args, image],
                         capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - started


@pytest.mark.skipif(not os.path.exists(HOST_CA), reason=f"pip in the container needs the host CA bundle {HOST_CA}")
def test_requirements_are_installed_at_start_as_the_aws_toolkit_does(docker, serve_image, tmp_path, free_port):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(textwrap.dedent(NEEDS_EINOPS))
    (tmp_path / "code" / "requirements.txt").write_text("einops==0.8.1\n")
    tmp_path.chmod(0o755)
    port = free_port()
    name = f"byoc-test-reqs-{port}"
    subprocess.run([docker, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
                    "-e", f"PIP_CERT={HOST_CA}", "-v", f"{HOST_CA}:{HOST_CA}:ro",
                    "-v", f"{tmp_path}:/opt/ml/model:ro", serve_image], check=True, capture_output=True)
    try:
        deadline, status = time.monotonic() + 240, None
        while time.monotonic() < deadline:
            status, body = status_of(f"http://127.0.0.1:{port}/invocations", b"[1, 2]",
                                     {"Content-Type": "application/json"})
            if status == 200:
                break
            time.sleep(1)
        assert (status, json.loads(body)) == (200, [2.0, 4.0]), subprocess.run(
            [docker, "logs", name], capture_output=True, text=True).stderr[-3000:]
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)


def test_a_failed_install_stops_the_container_with_pips_reason_last(docker, serve_image, tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(textwrap.dedent(NEEDS_EINOPS))
    (tmp_path / "code" / "requirements.txt").write_text("einops==0.8.1\n")
    (tmp_path / "code" / "wheelhouse").mkdir()   # offline, and einops is not in it
    for p in (tmp_path, tmp_path / "code", tmp_path / "code" / "wheelhouse"):
        p.chmod(0o755)
    out, took = run_serve(docker, serve_image, tmp_path)
    last = (out.stdout + out.stderr).strip().splitlines()[-1]
    assert out.returncode == 1 and took < 60
    assert "pip install -r code/requirements.txt failed" in last and "einops" in last


def test_installing_can_be_turned_off(docker, serve_image, tmp_path, free_port):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(textwrap.dedent(SLOW_MODEL.replace("time.sleep(12)", "0")))
    (tmp_path / "code" / "requirements.txt").write_text("no-such-package-byoc==9.9\n")
    tmp_path.chmod(0o755)
    port = free_port()
    name = f"byoc-test-noreqs-{port}"
    subprocess.run([docker, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
                    "-e", "BYOC_INSTALL_REQUIREMENTS=false", "-v", f"{tmp_path}:/opt/ml/model:ro", serve_image],
                   check=True, capture_output=True)
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and status != 200:
            status, _ = status_of(f"http://127.0.0.1:{port}/ping")
            time.sleep(0.5)
        assert status == 200
        logs = subprocess.run([docker, "logs", name], capture_output=True, text=True).stderr
        assert "code/requirements.txt not installed: BYOC_INSTALL_REQUIREMENTS=false" in logs
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)


@pytest.mark.parametrize("case", ["empty", "state_dict", "unreadable"])
def test_no_model_or_an_unreadable_one_stops_serve_within_30_s_with_the_reason_last(docker, serve_image, tmp_path,
                                                                                     case):
    model = tmp_path / "model"
    model.mkdir()
    if case == "state_dict":   # a bare state_dict: nothing says what network it is
        import torch
        torch.save({"fc.weight": torch.zeros(2, 2)}, model / "model.pt")
        (model / "model.pt").chmod(0o644)
    if case == "unreadable":
        (model / "model.pt").write_bytes(b"x")
    model.chmod(0o700 if case == "unreadable" else 0o755)   # uid 1000 cannot list it
    out, took = run_serve(docker, serve_image, model, "-e", "SAGEMAKER_PROGRAM=resnet18.py", timeout=60)
    last = (out.stdout + out.stderr).strip().splitlines()[-1]
    assert out.returncode == 1 and took < 30, (took, last)
    want = {"empty": "no model to load", "state_dict": "is a state_dict (1 tensors",
            "unreadable": "cannot be read"}[case]
    assert want in last, last
    if case != "unreadable":
        assert "code/resnet18.py (SAGEMAKER_PROGRAM)" in last
