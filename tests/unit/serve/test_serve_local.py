"""The real `serve` on this host, with each engine (python, and TorchServe 0.12 + java),
against a tiny real model: /ping, /invocations with real images, bad requests, a model
that cannot load, SIGTERM with a request in flight; and what the python engine does when
user code is slower than the timeout, a worker is killed, or a body is large. The
torchserve cases skip only when java or TorchServe is missing."""
from __future__ import annotations

import concurrent.futures
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from support.containers import SLOW_LOAD_INFERENCE
from support.serving import CLASSES, USER_MODEL_FN

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _torchserve_missing() -> str | None:
    if not shutil.which("java"):
        return "java is not installed (TorchServe's frontend needs a JRE 17)"
    try:
        import ts  # noqa: F401
    except ImportError:
        return "torchserve is not installed (pip install torchserve==0.12.0)"
    return None


_WHY = _torchserve_missing()
ENGINES = ["python", pytest.param("torchserve", marks=pytest.mark.skipif(_WHY is not None, reason=_WHY or ""))]
pytestmark = [pytest.mark.slow]


def free_ports(n: int) -> list[int]:
    """n consecutive free TCP ports."""
    for _ in range(200):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1]
        s.close()
        if base + n > 65000:
            continue
        try:
            socks = []
            for p in range(base, base + n):
                t = socket.socket()
                t.bind(("0.0.0.0", p))
                socks.append(t)
            for t in socks:
                t.close()
            return list(range(base, base + n))
        except OSError:
            for t in socks:
                t.close()
    raise RuntimeError("no free ports")


def http(method, url, body=None, headers=None, timeout=60):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type"), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), err.read()


class Serve:
    """`python -m serve` in a subprocess, with its output kept for asserts."""

    def __init__(self, model_dir, workdir, engine="python", **env):
        port, mgmt = free_ports(1)[0], free_ports(5)[0]
        self.port, self.mgmt = port, mgmt
        self.url = f"http://127.0.0.1:{port}"
        os.makedirs(workdir, exist_ok=True)
        self.log_path = os.path.join(workdir, "serve.log")
        full_env = dict(os.environ)
        full_env.update(
            {
                "SM_MODEL_DIR": str(model_dir),
                "BYOC_SERVE_WORKDIR": str(workdir),
                "SAGEMAKER_BIND_TO_PORT": str(port),
                "SAGEMAKER_SAFE_PORT_RANGE": f"{mgmt}-{mgmt + 4}",
                "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
                "BYOC_SERVE_STARTUP_TIMEOUT": "120",
                "BYOC_SERVING_ENGINE": engine,
            }
        )
        full_env.update({k: str(v) for k, v in env.items()})
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "serve"], env=full_env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return open(self.log_path, errors="replace").read()

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited ({self.proc.returncode}):\n{self.output()[-4000:]}")
            try:
                if http("GET", self.url + "/ping", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)   # as SageMaker's health check does
        pytest.fail(f"serve not ready after {timeout}s:\n{self.output()[-4000:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def make_model_dir(path, model_files, code: str | None = None):
    path.mkdir()
    os.symlink(model_files / "model.pt", path / "model.pt")
    (path / "model.json").write_text((model_files / "model.json").read_text())
    if code:
        (path / "code").mkdir()
        (path / "code" / "inference.py").write_text(code)
    return path


@pytest.fixture(scope="module", params=ENGINES)
def server(request, model_files, tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    model_dir = make_model_dir(base / "model", model_files)
    s = Serve(model_dir, base / "work", request.param, SAGEMAKER_TS_BATCH_SIZE=4, SAGEMAKER_TS_MAX_BATCH_DELAY=20)
    s.engine = request.param
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()
    assert s.proc.returncode == 0, s.output()[-3000:]
    assert (model_dir / "model.json").exists() and os.path.exists(model_dir / "model.pt")


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_ping_and_jpeg_top_k(server, jpeg_bytes):
    assert http("GET", server.url + "/ping")[0] == 200
    assert http("HEAD", server.url + "/ping")[0] == 200   # load balancers' health checks
    code, ctype, body = http("POST", server.url + "/invocations", jpeg_bytes, {"Content-Type": "image/jpeg"})
    assert code == 200, body
    assert ctype.startswith("application/json")
    preds = json.loads(body)["predictions"]
    assert [set(p) for p in preds] == [{"label", "index", "probability"}] * 3
    assert {p["label"] for p in preds} == set(CLASSES)
    assert preds[0]["probability"] >= preds[1]["probability"] >= preds[2]["probability"]


def test_each_content_type(server, png_bytes, jpeg_bytes):
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    cases = [
        (png_bytes, "image/png", "application/json"),
        (jpeg_bytes, "application/x-image", "application/json"),
        (npy(pixels), "application/x-npy", "application/x-npy"),
        (json.dumps(pixels.tolist()).encode(), "application/json", "text/csv"),
    ]
    for body, ctype, accept in cases:
        code, rtype, out = http("POST", server.url + "/invocations", body, {"Content-Type": ctype, "Accept": accept})
        assert code == 200, (ctype, out)
        assert rtype.startswith(accept)


def test_bad_requests_get_4xx_json_and_server_stays_healthy(server, jpeg_bytes):
    cases = [
        (jpeg_bytes[:200], "image/jpeg", None, 400),
        (b"", "image/jpeg", None, 400),
        (b"garbage", "image/png", None, 400),
        (b"[1, NaN]", "application/json", None, 400),
        (b"[[1, 2], [3]]", "application/json", None, 400),
        (b'{"a": 1}', "application/json", None, 400),
        (b"\x93NUMPY garbage", "application/x-npy", None, 400),
        (b"hello", "text/html", None, 415),
        (jpeg_bytes, "image/jpeg", "image/png", 406),
        (os.urandom(2000), "application/x-image", None, 400),
    ]
    for body, ctype, accept, expected in cases:
        headers = {"Content-Type": ctype}
        if accept:
            headers["Accept"] = accept
        code, rtype, out = http("POST", server.url + "/invocations", body, headers)
        assert code == expected, (ctype, code, out)
        err = json.loads(out)
        assert err["code"] == expected and "Traceback" not in out.decode()
        assert "/tmp" not in out.decode() and REPO not in out.decode()
    assert http("GET", server.url + "/ping")[0] == 200
    assert http("POST", server.url + "/invocations", jpeg_bytes, {"Content-Type": "image/jpeg"})[0] == 200


def test_decompression_bomb_is_413(server):
    from test_codecs import png_header

    code, _, out = http("POST", server.url + "/invocations", png_header(12000, 12000), {"Content-Type": "image/png"})
    assert code == 413, out


def test_concurrent_mixed_batches(server, jpeg_bytes):
    """Batch size 4: good and bad requests share batches; each gets its own answer."""
    reqs = [(jpeg_bytes, "image/jpeg", 200), (b"nope", "image/jpeg", 400), (b"[1]", "text/html", 415)] * 8

    def call(r):
        return http("POST", server.url + "/invocations", r[0], {"Content-Type": r[1]})[0], r[2]

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(call, reqs))
    assert all(got == want for got, want in results), results


def test_expect_100_continue_is_answered_once(server, jpeg_bytes):
    # curl sends "Expect: 100-continue" with larger bodies; the front door answers it and
    # must not pass it on (TorchServe's interim 100 would then reach the relay).
    out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-H", "Expect: 100-continue",
                          "-H", "Content-Type: image/jpeg", "--data-binary", "@-", server.url + "/invocations"],
                         input=jpeg_bytes, capture_output=True, timeout=60) if shutil.which("curl") else None
    if out is None:
        code, _, body = http("POST", server.url + "/invocations", jpeg_bytes,
                             {"Content-Type": "image/jpeg", "Expect": "100-continue"})
    else:
        body, _, code = out.stdout.rpartition(b"\n")
        code = int(code)
    assert code == 200, body
    assert len(json.loads(body)["predictions"]) == 3


def test_get_invocations_does_not_run_the_model(server):
    code, _, _ = http("GET", server.url + "/invocations")
    assert 400 <= code < 500


def test_management_api_only_on_loopback(server):
    if server.engine != "torchserve":
        pytest.skip("the python engine has no management port")
    assert http("GET", f"http://127.0.0.1:{server.mgmt}/models")[0] == 200
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 1))  # no packet sent: just picks the outward interface
        ip = s.getsockname()[0]
    except OSError:
        pytest.skip("no non-loopback address")
    finally:
        s.close()
    if ip.startswith("127."):
        pytest.skip("no non-loopback address")
    with pytest.raises(OSError):
        socket.create_connection((ip, server.mgmt), timeout=2).close()


@pytest.mark.parametrize("engine", ENGINES)
def test_model_that_cannot_load_exits_non_zero_with_reason_last(model_files, tmp_path, engine):
    model_dir = make_model_dir(
        tmp_path / "model", model_files, code="def model_fn(model_dir):\n    raise RuntimeError('state_dict does not match resnet18')\n"
    )
    s = Serve(model_dir, tmp_path / "work", engine)
    try:
        s.proc.wait(120)
    finally:
        s.stop()
    out = s.output()
    assert s.proc.returncode == 1, out[-3000:]
    assert "state_dict does not match resnet18" in out.strip().splitlines()[-1]


@pytest.mark.parametrize("engine", ENGINES)
def test_no_model_stops_at_once_with_the_reason_last(tmp_path, engine):
    (tmp_path / "model").mkdir()
    s = Serve(tmp_path / "model", tmp_path / "work", engine, SAGEMAKER_PROGRAM="resnet18.py")
    start = time.monotonic()
    try:
        s.proc.wait(30)
    finally:
        s.stop()
    last = s.output().strip().splitlines()[-1]
    assert s.proc.returncode == 1 and time.monotonic() - start < 30
    assert "no model to load" in last and "code/resnet18.py (SAGEMAKER_PROGRAM)" in last and "empty" in last


SLOW = USER_MODEL_FN + '''
import time
def transform_fn(model, body, content_type, accept):
    time.sleep(float(body or 3))
    return b"done", "text/plain"
'''


@pytest.mark.parametrize("engine", ENGINES)
def test_sigterm_finishes_the_request_in_flight(model_files, tmp_path, engine):
    """TorchServe alone drops a request still in a worker 2 s after SIGTERM;
    `serve` drains first."""
    model_dir = make_model_dir(tmp_path / "model", model_files, code=SLOW)
    s = Serve(model_dir, tmp_path / "work", engine, BYOC_SERVE_GRACE_PERIOD=20)
    try:
        s.wait_ready()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(http, "POST", s.url + "/invocations", b"4", {"Content-Type": "text/plain"})
            time.sleep(1.0)
            s.proc.send_signal(signal.SIGTERM)
            code, _, body = fut.result(30)
        assert (code, body) == (200, b"done")
        assert s.proc.wait(30) == 0
    finally:
        s.stop()


@pytest.mark.parametrize("engine", ENGINES)
def test_multihead_model_in_mixed_batches_with_per_request_topk(tmp_path, jpeg_bytes, engine):
    """A Bengali-style model (three heads) exported by the trainer, served with
    batch size 4: a good photo, a truncated one and a topk=2 request share
    batches and each gets its own answer."""
    import torch

    from byoc.artifact import build_model, write

    heads = [{"name": "root", "num_classes": 7, "classes": [f"r{i}" for i in range(7)], "weight": 2.0},
             {"name": "vowel", "num_classes": 3, "classes": ["a", "e", "i"], "weight": 1.0}]
    spec = {"format_version": 1, "task": "image-classification", "arch": "resnet18", "library": "torchvision",
            "num_classes": None, "classes": None, "heads": heads, "input_size": [3, 32, 32],
            "mean": [0.5] * 3, "std": [0.25] * 3, "weights": "model.pt"}
    torch.manual_seed(0)
    write(build_model(spec).eval(), spec, tmp_path / "model")
    s = Serve(tmp_path / "model", tmp_path / "work", engine, SAGEMAKER_TS_BATCH_SIZE=4, SAGEMAKER_TS_MAX_BATCH_DELAY=50,
              SAGEMAKER_CONTAINER_LOG_LEVEL="DEBUG")
    try:
        s.wait_ready()
        kinds = [({"Content-Type": "image/jpeg"}, jpeg_bytes, 200, 5),
                 ({"Content-Type": "image/jpeg"}, jpeg_bytes[:300], 400, None),
                 ({"Content-Type": "image/jpeg", "Accept": "application/json; topk=2"}, jpeg_bytes, 200, 2)] * 6

        def call(k):
            code, _, body = http("POST", s.url + "/invocations", k[1], k[0])
            return code, json.loads(body)

        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            results = list(pool.map(call, kinds))
    finally:
        s.stop()
    answers = set()
    for (headers, _, want, k), (code, body) in zip(kinds, results):
        assert code == want, (headers, body)
        if code == 200:
            assert set(body["predictions"]) == {"root", "vowel"}
            assert len(body["predictions"]["root"]) == k and len(body["predictions"]["vowel"]) == min(k, 3)
            answers.add(body["predictions"]["root"][0]["label"])
        else:
            assert body["code"] == 400 and body["message"]
    assert len(answers) == 1     # the same photo, the same top class, whatever its batch
    log = s.output()
    batches = log.count("Backend received inference at") + log.count("batch of")
    assert 0 < batches < len(kinds), "no batch held more than one request"
    assert s.proc.returncode == 0, log[-3000:]


# ---------------------------------------------------------------- the python engine's failures
USER_CODE = """
import os, time

def model_fn(model_dir):
    return "model"

def input_fn(body, content_type):
    return body

def predict_fn(data, model):
    if data == b"die":
        os.kill(os.getpid(), 9)      # as the kernel's OOM killer would
    if data.startswith(b"sleep "):
        time.sleep(float(data[6:]))
    return data

def output_fn(prediction, accept):
    return prediction, "application/octet-stream"
"""


@pytest.fixture
def user_code_server(tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text(USER_CODE)
    s = Serve(model_dir, tmp_path / "work", "python", SAGEMAKER_MODEL_SERVER_WORKERS=2,
              SAGEMAKER_MODEL_SERVER_TIMEOUT=3, SAGEMAKER_MAX_PAYLOAD_IN_MB=64)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def post(s, body, timeout=60):
    return http("POST", s.url + "/invocations", body, {"Content-Type": "application/octet-stream"}, timeout)


def wait_workers(s, n=2, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if s.output().count("ready (pid") >= n:
            return
        time.sleep(0.2)
    pytest.fail(f"workers not restarted:\n{s.output()[-3000:]}")


def test_user_code_over_the_timeout_gets_504_and_its_worker_is_replaced(user_code_server):
    s = user_code_server
    started = time.monotonic()
    code, ctype, body = post(s, b"sleep 30")
    assert code == 504 and ctype == "application/json", body
    assert time.monotonic() - started < 10
    assert "SAGEMAKER_MODEL_SERVER_TIMEOUT" in json.loads(body)["message"]
    wait_workers(s, 3)   # the two first, and the one that replaced the stuck worker
    assert [post(s, b"after %d" % i)[2] for i in range(4)] == [b"after %d" % i for i in range(4)]


def test_a_killed_worker_costs_only_its_request_and_is_restarted(user_code_server):
    s = user_code_server
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        others = [pool.submit(post, s, b"sleep 0.5") for _ in range(6)]
        time.sleep(0.1)
        code, _, body = post(s, b"die")
        answers = [f.result() for f in others]
    assert code == 503 and "died" in json.loads(body)["message"], body
    assert all(a[0] == 200 and a[2] == b"sleep 0.5" for a in answers), answers
    wait_workers(s, 3)
    assert http("GET", s.url + "/ping")[0] == 200
    assert post(s, b"still here")[2] == b"still here"


def test_a_large_body_is_answered_whole_and_not_left_on_disk(user_code_server, tmp_path):
    s = user_code_server
    body = os.urandom(40 * 1024 * 1024)   # over the 8 MiB kept in memory: spooled both ways
    code, _, out = post(s, body, timeout=120)
    assert code == 200 and out == body
    spool = tmp_path / "work" / "spool"
    assert list(spool.iterdir()) == []
    code, _, out = post(s, os.urandom(65 * 1024 * 1024), timeout=120)
    assert code == 413 and json.loads(out)["code"] == 413


def test_slow_clients_do_not_starve_ping(user_code_server):
    s = user_code_server
    host, port = "127.0.0.1", int(s.url.rsplit(":", 1)[1])
    slow = []
    for _ in range(20):   # each sends headers announcing a body, then nothing
        c = socket.create_connection((host, port))
        c.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\nab")
        slow.append(c)
    try:
        started = time.monotonic()
        assert http("GET", s.url + "/ping", timeout=5)[0] == 200
        assert time.monotonic() - started < 1
    finally:
        for c in slow:
            c.close()


# ---------------------------------------------------------------- multi-model endpoints
def model_with_code(folder, source):
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "inference.py").write_text(source)
    return folder


ANSWER_WITH = """
def model_fn(model_dir):
    return {answer!r}

def transform_fn(model, body, content_type, accept):
    return model.encode() + b":" + body, "text/plain"
"""


@pytest.fixture
def mme(tmp_path):
    s = Serve(tmp_path / "unused", tmp_path / "work", "python", SAGEMAKER_MULTI_MODEL="true")
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def load(s, name, url):
    code, _, body = http("POST", s.url + "/models", json.dumps({"model_name": name, "url": str(url)}).encode(),
                         {"Content-Type": "application/json"}, timeout=120)
    return code, json.loads(body)


def invoke(s, name, body=b"x", timeout=60):
    return http("POST", f"{s.url}/models/{name}/invoke", body, {"Content-Type": "text/plain"}, timeout)


def test_each_model_runs_its_own_inference_py(mme, tmp_path):
    for name in ("a", "b"):
        model_with_code(tmp_path / name, ANSWER_WITH.format(answer=name))
        assert load(mme, name, tmp_path / name)[0] == 200
    assert invoke(mme, "a")[2] == b"a:x" and invoke(mme, "b")[2] == b"b:x"
    code, listed = 200, json.loads(http("GET", mme.url + "/models")[2])
    assert listed == {"models": [{"modelName": "a", "modelUrl": str(tmp_path / "a")},
                                 {"modelName": "b", "modelUrl": str(tmp_path / "b")}]}
    assert http("DELETE", mme.url + "/models/a")[0] == 200
    code, _, body = invoke(mme, "a")
    assert code == 404 and json.loads(body)["code"] == 404
    assert invoke(mme, "b")[2] == b"b:x"


def test_a_model_whose_model_fn_raises_fails_alone_with_its_reason(mme, tmp_path):
    model_with_code(tmp_path / "good", ANSWER_WITH.format(answer="good"))
    model_with_code(tmp_path / "bad", "def model_fn(model_dir):\n    raise ValueError('weights for another net')\n")
    assert load(mme, "good", tmp_path / "good")[0] == 200
    code, body = load(mme, "bad", tmp_path / "bad")
    assert code == 500 and "weights for another net" in body["message"]
    assert invoke(mme, "good")[2] == b"good:x"
    assert [m["modelName"] for m in json.loads(http("GET", mme.url + "/models")[2])["models"]] == ["good"]
    assert load(mme, "nothing", tmp_path / "no-such-folder")[0] == 404
    (tmp_path / "empty").mkdir()
    code, body = load(mme, "empty", tmp_path / "empty")
    assert code == 404 and "no model to load" in body["message"]


def test_loading_a_model_never_holds_up_the_others(mme, tmp_path):
    model_with_code(tmp_path / "fast", ANSWER_WITH.format(answer="fast"))
    model_with_code(tmp_path / "slow", SLOW_LOAD_INFERENCE.format(seconds=4))
    assert load(mme, "fast", tmp_path / "fast")[0] == 200
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        loading = pool.submit(load, mme, "slow", tmp_path / "slow")
        time.sleep(0.5)
        latencies = []
        while not loading.done():
            started = time.monotonic()
            assert invoke(mme, "fast")[2] == b"fast:x"
            latencies.append(time.monotonic() - started)
        assert loading.result()[0] == 200
    assert len(latencies) > 5 and max(latencies) < 1.0, latencies
