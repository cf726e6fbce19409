"""SIGTERM under load: every request sent before the signal gets its answer, /ping
turns 503 ("Draining") so that traffic goes elsewhere, and the container exits 0
within SageMaker's grace period. Requests sent after the signal may be refused:
they are counted apart.

The model's predict_fn sleeps 0.5 s so that requests are really in flight
(queued or in the worker) when the signal comes."""
import asyncio
import json
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import requests

from support.containers import classifier_model_dir, logs_of, serving

pytestmark = pytest.mark.both_engines  # the same contract whichever engine serves

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = sorted((ROOT / "samples" / "photos").glob("*.jpg"))
CLASSES = ("brick", "grass", "gravel")
IN_FLIGHT = 8
# SageMaker stops a container with SIGTERM and kills it 30 s later; `serve`
# drains for up to BYOC_SERVE_GRACE_PERIOD (25 s) of that.
SAGEMAKER_GRACE_S = 30

SLOW_INFERENCE = '''
"""The built-in classifier, with a predict_fn that takes 0.5 s per request."""
import time

from handlers.image_classifier import input_fn, model_fn, output_fn  # noqa: F401
from handlers.image_classifier import predict_fn as _batched_predict


def predict_fn(data, model):
    time.sleep(0.5)
    return _batched_predict([data], model)[0]
'''


@pytest.fixture
def slow_server(docker, serve_image, tmp_path, free_port):
    model = classifier_model_dir(tmp_path / "model", classes=CLASSES)
    (model / "code" / "inference.py").write_text(SLOW_INFERENCE)
    port = free_port()
    name = f"byoc-test-drain-{port}"
    with serving(docker, serve_image, model, port, name) as url:   # default settings
        yield name, url


class Record:
    def __init__(self, started):
        self.started, self.ended, self.status, self.label, self.error = started, None, None, None, None


async def keep_busy(url, bodies, signalled: threading.Event, records, sustained):
    """IN_FLIGHT clients post photos back to back. Once the signal is sent each
    sends one more request (a late client) and stops, or, `sustained`, goes on
    until its first refused request, as a load balancer that is slow to notice."""
    timeout = aiohttp.ClientTimeout(total=90)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=IN_FLIGHT)) as session:
        async def client(k):
            i = k
            while True:
                late = signalled.is_set()
                record = Record(time.monotonic())
                records.append(record)
                try:
                    async with session.post(url + "/invocations", data=bodies[i % len(bodies)],
                                            headers={"Content-Type": "image/jpeg"}) as response:
                        body = await response.read()
                        record.status = response.status
                    record.label = json.loads(body)["predictions"][0]["label"] if record.status == 200 else None
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as exc:
                    record.error = f"{type(exc).__name__}: {exc}"
                record.ended = time.monotonic()
                i += IN_FLIGHT
                if late and (not sustained or record.status != 200):
                    return

        await asyncio.gather(*(client(k) for k in range(IN_FLIGHT)))


@pytest.mark.parametrize("sustained", [
    pytest.param(False, id="clients-stop-at-signal"),
    # TorchServe accepts requests while `serve` drains: clients that ignore
    # /ping keep its queue full, so the drain ends at the grace period (less
    # java's stop time) and the requests still queued then are cut.
    pytest.param(True, id="clients-keep-sending"),
])
def test_sigterm_under_load_finishes_every_request_and_exits_0(slow_server, docker, sustained):
    name, url = slow_server
    bodies = [p.read_bytes() for p in PHOTOS]
    signalled, records = threading.Event(), []
    load = threading.Thread(target=lambda: asyncio.run(keep_busy(url, bodies, signalled, records, sustained)))
    load.start()
    try:
        time.sleep(4)     # steady state: IN_FLIGHT requests queued or in the worker
        t_signal = time.monotonic()
        subprocess.run([docker, "kill", "-s", "TERM", name], check=True, capture_output=True)
        signalled.set()
        ping = requests.get(url + "/ping", timeout=10)   # requests still in flight: not stopped yet
        waited = subprocess.run([docker, "wait", name], capture_output=True, text=True, timeout=120)
        seconds_to_exit = time.monotonic() - t_signal
    finally:
        signalled.set()
        load.join(timeout=120)
    exit_code = int(waited.stdout.strip())
    log = logs_of(docker, name)

    before = [r for r in records if r.started < t_signal]
    after = [r for r in records if r.started >= t_signal]
    in_flight = sum(1 for r in before if r.ended is None or r.ended > t_signal)
    completed = [r for r in before if r.status == 200 and r.label in CLASSES]
    late_ok = sum(1 for r in after if r.status == 200)
    print(f"\ndrain: {len(before)} sent before SIGTERM, {in_flight} in flight at the signal, "
          f"{len(completed)} answered 200; after the signal {len(after)} sent, {late_ok} answered, "
          f"{len(after) - late_ok} refused; exit {exit_code} after {seconds_to_exit:.1f} s")
    refusals = Counter(r.status or (r.error or "no answer").split(":")[0] for r in after if r.status != 200)
    print(f"drain: the refused got {dict(refusals)}")

    assert in_flight >= IN_FLIGHT // 2, "the load was not in flight when the signal came"
    dropped = [(r.status, r.error) for r in before if r not in completed]
    assert not dropped, f"{len(dropped)} requests sent before SIGTERM were dropped: {dropped[:8]}\n{log[-3000:]}"
    assert ping.status_code == 503 and ping.json()["status"] == "Draining", ping.text
    assert exit_code == 0, log[-3000:]
    assert seconds_to_exit < SAGEMAKER_GRACE_S, log[-3000:]
    if not sustained:
        assert "drained: no request queued or running" in log, log[-3000:]
        print(next(line for line in log.splitlines() if "drained:" in line))
