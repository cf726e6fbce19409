"""The python engine (serve/pool.py) with real worker processes and tiny models of user
code, driven in-process: what it does when a model is unloaded while it loads, a worker
proves its optimisation, dies, times out or cannot be started, and when the server stops."""
from __future__ import annotations

import asyncio
import errno
import json
import os
import time

import pytest

from serve import pool
from serve.config import ServeConfig
from serve.engine import InferRequest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

ECHO = """
def model_fn(model_dir):
    return "m"
def transform_fn(model, body, content_type, accept):
    return body, "text/plain"
"""

SLOW_LOAD = """
import time
def model_fn(model_dir):
    time.sleep(3)
    return "m"
def transform_fn(model, body, content_type, accept):
    return body, "text/plain"
"""


@pytest.fixture(autouse=True)
def worker_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", REPO)   # the workers import serve.* from this checkout


def make_model(root, name, code):
    d = root / name
    (d / "code").mkdir(parents=True)
    (d / "code" / "inference.py").write_text(code)
    return str(d)


def make_engine(root, required=None, **env):
    env.setdefault("SAGEMAKER_MODEL_SERVER_WORKERS", "1")
    env.setdefault("BYOC_OPTIMIZE_MODEL", "false")
    cfg = ServeConfig.from_env({k: str(v) for k, v in env.items()}, gpus=0, cpus=2, memory_bytes=None)
    return pool.PythonEngine(cfg, str(root / "work"), required_model=required)


def request(body=b"x", content_type="application/octet-stream"):
    return InferRequest(content_type=content_type, accept=content_type, body=body, size=len(body))


def run(coro, timeout=60):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


SLOW_FORWARD = """
import time, torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 4)
    def forward(self, x):
        time.sleep(0.12)
        return self.lin(x)
def model_fn(model_dir):
    torch.manual_seed(0)
    return Net().eval()
"""


def test_a_batch_s_timeout_does_not_count_the_previous_batch_s_proofs(tmp_path):
    """The proofs after the first answer run several 120 ms forwards, more than the 1 s
    timeout: the next request waits for them, then gets its answer, not a 504."""
    async def check():
        engine = make_engine(tmp_path, required="model", SAGEMAKER_MODEL_SERVER_TIMEOUT=1,
                             BYOC_OPTIMIZE_MODEL="true", SAGEMAKER_TS_BATCH_SIZE=1)
        d = make_model(tmp_path, "model", SLOW_FORWARD)
        try:
            await engine.load("model", d, d)
            body = json.dumps([[float(i) for i in range(16)]]).encode()
            return [(await engine.infer("model", request(body, "application/json"))).status for _ in range(3)]
        finally:
            await engine.stop()
    assert run(check()) == [200, 200, 200]


@pytest.mark.parametrize("phase", ["worker", "requirements"])
def test_unloading_a_model_while_it_loads_answers_the_load_and_frees_the_name(tmp_path, monkeypatch, phase):
    if phase == "requirements":   # code/requirements.txt installing: pip takes a while
        monkeypatch.setattr(pool.requirements, "install", lambda *a: (time.sleep(1.5), None)[1])

    async def check():
        engine = make_engine(tmp_path)
        d = make_model(tmp_path, "slow", SLOW_LOAD)
        try:
            load = asyncio.ensure_future(engine.load("slow", d, d))
            await asyncio.sleep(0.5)
            model = engine.served["slow"]
            await engine.unload("slow")
            with pytest.raises(pool.ServiceUnavailable, match="unloaded while it loaded"):
                await asyncio.wait_for(load, 8)
            await asyncio.sleep(3)   # a worker that went on loading would be ready by now
            assert engine.models() == []
            assert all(w.proc is None or w.proc.returncode is not None for w in model.workers)
            e = make_model(tmp_path, "echo", ECHO)
            await engine.load("slow", e, e)   # the name is free again
            return (await engine.infer("slow", request(b"again"))).body
        finally:
            await engine.stop()
    assert run(check()) == b"again"


LARGE_LATE = """
import time
def model_fn(model_dir):
    return "m"
def transform_fn(model, body, content_type, accept):
    if body == b"slow":
        time.sleep(2.3)
        return b"x" * (9 << 20), "application/octet-stream"   # a large answer: a spooled file
    return body, "application/octet-stream"
"""


def spooled(engine):
    return [os.path.join(d, f) for d, _, files in os.walk(engine.spool) for f in files]


def test_an_answer_that_comes_after_its_timeout_is_dropped_with_its_file(tmp_path, monkeypatch):
    """The answer (2.3 s) and the timeout (2 s) are both due when the loop wakes: the
    request queued behind gets a fresh worker, not the one being killed, and the late
    answer's file is deleted."""
    monkeypatch.setattr(pool, "RESTART_BACKOFF_S", (0.1,))   # the new worker is up within the timeout

    async def check():
        engine = make_engine(tmp_path, required="model", SAGEMAKER_MODEL_SERVER_TIMEOUT=2,
                             SAGEMAKER_TS_BATCH_SIZE=1, SAGEMAKER_TS_MAX_BATCH_DELAY=0)
        d = make_model(tmp_path, "model", LARGE_LATE)
        try:
            await engine.load("model", d, d)
            slow = asyncio.ensure_future(engine.infer("model", request(b"slow")))
            await asyncio.sleep(0.1)
            quick = asyncio.ensure_future(engine.infer("model", request(b"quick")))   # queued behind it
            await asyncio.sleep(0.1)
            time.sleep(2.5)   # the loop busy: both the answer and the timer are due
            answers = [(await slow).status, (await quick).status, (await quick).body]
            await asyncio.sleep(0.5)
            return answers, spooled(engine)
        finally:
            await engine.stop()
    answers, left = run(check())
    assert answers == [504, 200, b"quick"] and left == []


KILLED_WRITING = """
import os, signal, sys
def model_fn(model_dir):
    return "m"
def transform_fn(model, body, content_type, accept):
    if body == b"die":   # killed while its answer file is half written
        worker = sys.modules["__main__"]   # serve/worker.py, run with -m
        def half(folder, data, prefix="answer-"):
            with open(os.path.join(folder, prefix + "half"), "wb") as f:
                f.write(data[:1000])
            os.kill(os.getpid(), signal.SIGKILL)
        worker._spool = half
        return b"x" * (9 << 20), "application/octet-stream"
    return body, "application/octet-stream"
"""


def test_a_worker_killed_while_writing_an_answer_leaves_nothing_in_the_spool(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "RESTART_BACKOFF_S", (0.1,))

    async def check():
        engine = make_engine(tmp_path, required="model", SAGEMAKER_TS_MAX_BATCH_DELAY=0)
        d = make_model(tmp_path, "model", KILLED_WRITING)
        try:
            await engine.load("model", d, d)
            died = (await engine.infer("model", request(b"die"))).status
            left = spooled(engine)   # gone as soon as its death is known, before any restart
            again = await engine.infer("model", request(b"again"))   # waits for the new worker
            return died, left, again.body, spooled(engine)
        finally:
            await engine.stop()
    assert run(check()) == (503, [], b"again", [])


DIES = """
import os
def model_fn(model_dir):
    return "m"
def transform_fn(model, body, content_type, accept):
    if body == b"die":
        os.kill(os.getpid(), 9)
    return body, "application/octet-stream"
"""


def test_a_worker_whose_restart_cannot_fork_is_started_again(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "RESTART_BACKOFF_S", (0.1,))

    async def check():
        engine = make_engine(tmp_path, required="model", SAGEMAKER_TS_MAX_BATCH_DELAY=0)
        d = make_model(tmp_path, "model", DIES)
        try:
            await engine.load("model", d, d)
            real, calls = asyncio.create_subprocess_exec, []

            async def flaky(*args, **kwargs):   # fork under memory pressure: ENOMEM, once
                calls.append(1)
                if len(calls) == 1:
                    raise OSError(errno.ENOMEM, "Cannot allocate memory")
                return await real(*args, **kwargs)
            monkeypatch.setattr(asyncio, "create_subprocess_exec", flaky)
            died = (await engine.infer("model", request(b"die"))).status
            later = await engine.infer("model", request(b"hello"))
            return died, later.body, len(calls), engine.health(), engine._fatal.done()
        finally:
            await engine.stop()
    assert run(check(), timeout=30) == (503, b"hello", 2, (True, ""), False)


FAILS_ON_ONE = """
import sys, time
def model_fn(model_dir):
    if sys.argv[sys.argv.index("--index") + 1] == "0":
        raise MemoryError("passing failure on worker 0")
    time.sleep(2)
    return "m"
def transform_fn(model, body, content_type, accept):
    return body, "text/plain"
"""


def test_a_load_that_fails_on_one_worker_stops_the_others(tmp_path):
    async def check():
        engine = make_engine(tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS=2)
        d = make_model(tmp_path, "flaky", FAILS_ON_ONE)
        try:
            load = asyncio.ensure_future(engine.load("flaky", d, d))
            await asyncio.sleep(0.1)
            model = engine.served["flaky"]
            with pytest.raises(pool.LoadFailed, match="passing failure"):
                await load
            await asyncio.sleep(3)   # worker 1 would have loaded by now
            return engine.models(), [w.proc.returncode is not None for w in model.workers]
        finally:
            await engine.stop()
    assert run(check()) == ([], [True, True])


LOADS_ONCE = """
import os
def model_fn(model_dir):
    marker = os.path.join(model_dir, "loaded-once")
    if os.path.exists(marker):
        raise RuntimeError("CUDA out of memory (the old worker's memory not freed yet)")
    open(marker, "w").close()
    return "m"
def transform_fn(model, body, content_type, accept):
    if body == b"die":
        os.kill(os.getpid(), 9)
    return body, "application/octet-stream"
"""


def test_a_queued_request_gets_503_once_no_worker_took_it_within_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "RESTART_BACKOFF_S", (0.2,))

    async def check():
        engine = make_engine(tmp_path, required="model", SAGEMAKER_MODEL_SERVER_TIMEOUT=1)
        d = make_model(tmp_path, "model", LOADS_ONCE)
        try:
            await engine.load("model", d, d)
            died = (await engine.infer("model", request(b"die"))).status
            start = time.monotonic()
            answers = await asyncio.gather(*(engine.infer("model", request(b"hello")) for _ in range(3)))
            return died, [a.status for a in answers], time.monotonic() - start, answers[0].body, engine._idle.is_set()
        finally:
            await engine.stop()
    died, statuses, waited, body, idle = run(check(), timeout=20)
    assert died == 503 and statuses == [503] * 3 and 0.9 < waited < 3 and idle
    assert b"SAGEMAKER_MODEL_SERVER_TIMEOUT" in body and b"out of memory" in body


def test_the_drain_ends_at_once_when_what_was_queued_went_with_an_unloaded_model(tmp_path):
    async def check():
        engine = make_engine(tmp_path)
        d = make_model(tmp_path, "slow", SLOW_LOAD)
        try:
            load = asyncio.ensure_future(engine.load("slow", d, d))
            await asyncio.sleep(0.3)
            waiting = asyncio.ensure_future(engine.infer("slow", request()))   # for a model still loading
            await asyncio.sleep(0.2)
            await engine.unload("slow")
            status = (await waiting).status
            loop = asyncio.get_running_loop()
            start = loop.time()
            await engine.drain(start + 4)
            return status, loop.time() - start
        finally:
            load.cancel()
            await asyncio.wait({load})
            load.cancelled() or load.exception()   # retrieved: 503, unloaded while it loaded
            await engine.stop()
    status, drained_in = run(check())
    assert status == 503 and drained_in < 1


def test_a_request_that_comes_while_or_after_the_engine_stops_gets_503(tmp_path):
    async def check():
        engine = make_engine(tmp_path, required="model", SAGEMAKER_TS_MAX_BATCH_DELAY=50)
        d = make_model(tmp_path, "model", ECHO)
        await engine.load("model", d, d)
        loop = asyncio.get_running_loop()
        await engine.drain(loop.time() + 5)   # nothing in flight: at once
        stopping = asyncio.ensure_future(engine.stop())
        during = asyncio.ensure_future(engine.infer("model", request()))   # waits 50 ms for company
        await stopping
        after = asyncio.ensure_future(engine.infer("model", request()))
        done, _ = await asyncio.wait({during, after}, timeout=3)
        return [t.result().status if t in done else None for t in (during, after)]
    assert run(check()) == [503, 503]
