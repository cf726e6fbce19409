"""/ping tells the truth: 503 while the model loads, 200 once it answers.
/execution-parameters matches the workers and payload limit in force."""
import json
import subprocess
import textwrap
import time
import urllib.error
import urllib.request

import pytest

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


def test_requirements_without_permission_stop_the_container_with_the_reason(docker, serve_image, tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(textwrap.dedent(SLOW_MODEL))
    (tmp_path / "code" / "requirements.txt").write_text("einops==0.8.1\n")
    tmp_path.chmod(0o755)
    out = subprocess.run([docker, "run", "--rm", "-v", f"{tmp_path}:/opt/ml/model:ro", serve_image],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "BYOC_INSTALL_REQUIREMENTS=true" in out.stdout + out.stderr
