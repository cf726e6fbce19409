"""The hosting modes beyond a real-time endpoint, through the serving image as SageMaker
runs it (serverless cold starts and Batch Transform's SDK job are in bench/ and
tests/local_mode):

- multi-model endpoints: SageMaker's custom-container contract (the label, /ping with no
  model, POST /models with 200/409/404/507, GET /models with paging, GET and DELETE
  /models/{name}, POST /models/{name}/invoke with the /invocations rules), each model with
  its own code/inference.py, a model whose model_fn raises failing alone, memory given back
  on unload, and a load that would not fit answered 507 before the container is OOM-killed;
- serverless: 1 CPU and 2 GB, concurrency 4 for a minute: no error, no OOM kill;
- asynchronous inference: a 400 MB application/x-npy body with SAGEMAKER_MAX_PAYLOAD_IN_MB=1024
  under --memory 3g gets the right answer (marked `large_payload`).
"""
import concurrent.futures
import io
import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from support.containers import (SLOW_LOAD_INFERENCE, SUM_NPY_INFERENCE, classifier_model_dir, container_memory, logs_of,
                                wait_healthy)

PHOTOS = Path(__file__).resolve().parents[2] / "samples" / "photos"

ADD_ONE = """
import json
import numpy as np

def model_fn(model_dir):
    return {tag!r}

def input_fn(body, content_type):
    if content_type != "application/json":
        raise ValueError("send application/json")
    return np.asarray(json.loads(body), dtype=float)

def predict_fn(data, model):
    return data + {add}

def output_fn(prediction, accept):
    if accept == "text/csv":
        return ",".join(str(v) for v in prediction.ravel()), accept
    return json.dumps({{"model": {tag!r}, "out": prediction.tolist()}}), "application/json"
"""

RAISES = "def model_fn(model_dir):\n    raise RuntimeError('this checkpoint is for another network')\n"


def write_model(root, name, source=None, classifier=False):
    """/opt/ml/models/<name>/model as SageMaker lays a multi-model endpoint's models out."""
    model = root / name / "model"
    if classifier:
        classifier_model_dir(model)
    else:
        (model / "code").mkdir(parents=True)
        (model / "code" / "inference.py").write_text(source)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return f"/opt/ml/models/{name}/model"


@pytest.fixture
def mme(docker, serve_image, tmp_path, free_port):
    """A multi-model container over tmp_path/models; yields (url, name, models root)."""
    root = tmp_path / "models"
    root.mkdir()
    port = free_port()
    name = f"byoc-test-mme-{port}"
    subprocess.run([docker, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-e",
                    "SAGEMAKER_MULTI_MODEL=true", "-v", f"{root}:/opt/ml/models:ro", serve_image],
                   check=True, capture_output=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(docker, name, url)
        yield url, name, root
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)


def load(url, name, model_url, timeout=120):
    r = requests.post(f"{url}/models", json={"model_name": name, "url": model_url}, timeout=timeout)
    return r.status_code, r.json()


def test_the_image_says_it_serves_multi_model_endpoints(docker, serve_image):
    labels = json.loads(subprocess.run([docker, "image", "inspect", "-f", "{{json .Config.Labels}}", serve_image],
                                       capture_output=True, text=True, check=True).stdout)
    assert labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"


def test_multi_model_contract(mme, docker):
    url, container, root = mme
    assert requests.get(f"{url}/ping", timeout=10).status_code == 200          # healthy with no model
    assert requests.get(f"{url}/models", timeout=10).json() == {"models": []}
    a = write_model(root, "a", ADD_ONE.format(tag="a", add=1))
    b = write_model(root, "b", ADD_ONE.format(tag="b", add=100))   # also code/inference.py
    photos = write_model(root, "photos", classifier=True)          # a built-in artifact
    write_model(root, "broken", RAISES)
    (root / "empty" / "model").mkdir(parents=True)
    for p in (root / "empty", root / "empty" / "model"):
        p.chmod(0o755)

    # two concurrent loads of one name: one 200, one 409
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        codes = sorted(f.result()[0] for f in [pool.submit(load, url, "a", a) for _ in range(2)])
    assert codes == [200, 409]
    code, body = load(url, "b", b)
    assert (code, body) == (200, {"status": 'Model "b" Version: 1.0 registered with 1 initial workers'})
    assert load(url, "photos", photos)[0] == 200
    assert load(url, "a", a)[0] == 409
    code, body = load(url, "nowhere", "/opt/ml/models/nowhere/model")
    assert code == 404 and body["code"] == 404
    code, body = load(url, "empty", "/opt/ml/models/empty/model")
    assert code == 404 and "no model to load" in body["message"]
    code, body = load(url, "broken", "/opt/ml/models/broken/model")
    assert code >= 400 and "this checkpoint is for another network" in body["message"]
    assert load(url, "nameless", None)[0] == 400

    # each model its own code, the codecs and errors of /invocations, the target model logged
    headers = {"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": "a.tar.gz"}
    assert requests.post(f"{url}/models/a/invoke", data="[1, 2]", headers=headers).json() == \
        {"model": "a", "out": [2.0, 3.0]}
    r = requests.post(f"{url}/models/b/invoke", data="[1, 2]",
                      headers={"Content-Type": "application/json", "Accept": "text/csv"})
    assert (r.status_code, r.text) == (200, "101.0,102.0")
    r = requests.post(f"{url}/models/b/invoke", data="[1, 2]", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and r.json()["code"] == 400          # its input_fn refused it
    jpeg = (PHOTOS / "brick.jpg").read_bytes()
    r = requests.post(f"{url}/models/photos/invoke", data=jpeg, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3
    assert "X-Amzn-SageMaker-Target-Model: a.tar.gz" in logs_of(docker, container)

    # listing with paging, describing, unloading
    page = requests.get(f"{url}/models", params={"limit": 2}).json()
    assert [m["modelName"] for m in page["models"]] == ["a", "b"]
    rest = requests.get(f"{url}/models", params={"limit": 2, "next_page_token": page["nextPageToken"]}).json()
    assert rest == {"models": [{"modelName": "photos", "modelUrl": photos}]}
    described = requests.get(f"{url}/models/b").json()[0]
    assert (described["modelName"], described["modelUrl"]) == ("b", b)
    assert requests.delete(f"{url}/models/a").json() == {"status": 'Model "a" unregistered'}
    r = requests.post(f"{url}/models/a/invoke", data="[1]", headers=headers)
    assert r.status_code == 404 and r.json()["code"] == 404
    assert requests.delete(f"{url}/models/a").status_code == 404
    assert requests.post(f"{url}/models/b/invoke", data="[0]", headers=headers).json()["out"] == [100.0]


def test_a_slow_load_never_holds_up_the_other_models(mme):
    url, _, root = mme
    fast = write_model(root, "fast", ADD_ONE.format(tag="fast", add=1))
    slow = write_model(root, "slow", SLOW_LOAD_INFERENCE.format(seconds=6))
    assert load(url, "fast", fast)[0] == 200
    headers = {"Content-Type": "application/json"}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        loading = pool.submit(load, url, "slow", slow)
        time.sleep(0.5)
        latencies = []
        while not loading.done():
            started = time.monotonic()
            r = requests.post(f"{url}/models/fast/invoke", data="[1]", headers=headers, timeout=30)
            assert r.json()["out"] == [2.0]
            latencies.append(time.monotonic() - started)
        assert loading.result()[0] == 200
    # the load takes over 6 s (a worker starts, then model_fn sleeps); the other model answers
    # all along, each request well under that
    assert len(latencies) > 10 and max(latencies) < 2.0, latencies
    assert requests.post(f"{url}/models/slow/invoke", data="x", headers=headers).text == "slow"


def test_unloading_gives_the_memory_back(mme, docker):
    url, container, root = mme
    models = [write_model(root, f"m{i}", classifier=True) for i in range(3)]
    before = container_memory(docker, container)
    for i, model in enumerate(models):
        assert load(url, f"m{i}", model)[0] == 200
    loaded = container_memory(docker, container)
    for i in range(3):
        assert requests.delete(f"{url}/models/m{i}").status_code == 200
    time.sleep(1)
    after = container_memory(docker, container)
    print(f"\nmulti-model memory: {before >> 20} MiB empty, {loaded >> 20} MiB with 3 models, "
          f"{after >> 20} MiB after unloading them")
    assert loaded - before > 300 << 20                  # three worker processes
    assert after - before < 0.1 * (loaded - before)     # and they are gone


def test_a_model_that_would_not_fit_gets_507_and_the_container_lives(docker, serve_image, tmp_path, free_port):
    """--memory 1200m: a model with 600 MB of weights needs more than is left; the answer is
    507 before any worker starts, and the container is not OOM-killed."""
    root = tmp_path / "models"
    small = write_model(root, "small", ADD_ONE.format(tag="small", add=1))
    big = root / "big" / "model"
    (big / "code").mkdir(parents=True)
    (big / "code" / "inference.py").write_text("import torch\n\ndef model_fn(d):\n    return torch.load(d + "
                                               "'/model.pt', weights_only=True)\n")
    import torch
    torch.save({"w": torch.zeros(150 * 1024 * 1024)}, big / "model.pt")   # 600 MB
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    port = free_port()
    name = f"byoc-test-mme507-{port}"
    subprocess.run([docker, "run", "-d", "--name", name, "--memory", "1200m", "-p", f"127.0.0.1:{port}:8080",
                    "-e", "SAGEMAKER_MULTI_MODEL=true", "-v", f"{root}:/opt/ml/models:ro", serve_image],
                   check=True, capture_output=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(docker, name, url)
        assert load(url, "small", small)[0] == 200
        code, body = load(url, "big", "/opt/ml/models/big/model")
        assert code == 507 and "MiB" in body["message"], body
        state = json.loads(subprocess.run([docker, "inspect", "-f", "{{json .State}}", name],
                                          capture_output=True, text=True).stdout)
        assert state["Running"] and not state["OOMKilled"]
        r = requests.post(f"{url}/models/small/invoke", data="[1]", headers={"Content-Type": "application/json"})
        assert r.json()["out"] == [2.0]
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)


# ---------------------------------------------------------------- serverless
def test_serverless_size_one_cpu_two_gb_concurrency_4_for_a_minute(docker, serve_image, tmp_path, free_port):
    model = classifier_model_dir(tmp_path / "model", size=224)
    port = free_port()
    name = f"byoc-test-serverless-{port}"
    subprocess.run([docker, "run", "-d", "--name", name, "--cpus", "1", "--memory", "2g", "-p",
                    f"127.0.0.1:{port}:8080", "-v", f"{model}:/opt/ml/model:ro", serve_image],
                   check=True, capture_output=True)
    url = f"http://127.0.0.1:{port}"
    bodies = [p.read_bytes() for p in sorted(PHOTOS.glob("*.jpg"))]
    try:
        wait_healthy(docker, name, url)
        statuses, stop = [], time.monotonic() + 60

        def client(k):
            with requests.Session() as session:
                while time.monotonic() < stop:
                    r = session.post(f"{url}/invocations", data=bodies[k % len(bodies)],
                                     headers={"Content-Type": "image/jpeg"}, timeout=60)
                    statuses.append(r.status_code)
                    k += 1
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        state = json.loads(subprocess.run([docker, "inspect", "-f", "{{json .State}}", name],
                                          capture_output=True, text=True).stdout)
        print(f"\nserverless 1 CPU / 2 GB, concurrency 4, 60 s: {len(statuses)} requests, "
              f"{sum(s != 200 for s in statuses)} errors, {container_memory(docker, name) >> 20} MiB at the end")
        assert statuses and set(statuses) == {200}
        assert state["Running"] and not state["OOMKilled"]
        assert "1 worker" in logs_of(docker, name)   # sized from the cgroup's CPU quota, not the host's cores
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)


# ---------------------------------------------------------------- asynchronous inference
@pytest.mark.large_payload
def test_a_400_mb_npy_body_gets_its_answer_under_3_gb(docker, serve_image, tmp_path, free_port):
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    (model / "code" / "inference.py").write_text(SUM_NPY_INFERENCE)
    for p in [model, *model.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    data = np.arange(100 * 1024 * 1024, dtype=np.float32) % 7   # 400 MiB
    buf = io.BytesIO()
    np.save(buf, data)
    port = free_port()
    name = f"byoc-test-async-{port}"
    subprocess.run([docker, "run", "-d", "--name", name, "--memory", "3g", "-p", f"127.0.0.1:{port}:8080",
                    "-e", "SAGEMAKER_MAX_PAYLOAD_IN_MB=1024", "-e", "SAGEMAKER_MODEL_SERVER_TIMEOUT=3600",
                    "-v", f"{model}:/opt/ml/model:ro", serve_image], check=True, capture_output=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(docker, name, url)
        r = requests.post(f"{url}/invocations", data=buf.getvalue(),
                          headers={"Content-Type": "application/x-npy"}, timeout=600)
        assert r.status_code == 200, r.text[:500]
        assert r.json() == {"shape": [100 * 1024 * 1024], "sum": float(data.sum(dtype=np.float64))}
        state = json.loads(subprocess.run([docker, "inspect", "-f", "{{json .State}}", name],
                                          capture_output=True, text=True).stdout)
        assert state["Running"] and not state["OOMKilled"]
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)

