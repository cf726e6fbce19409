"""The front door (serve/app.py) against a stand-in engine: what it answers itself (the
SageMaker routes, limits, JSON errors, the multi-model API), and that a request reaches
the engine unchanged, its body spooled to disk when large."""
from __future__ import annotations

import asyncio
import errno
import json
import os

import pytest
from aiohttp.test_utils import TestClient, TestServer

from serve import app as app_mod
from serve.app import Front, make_app
from serve.engine import Engine, InferResponse, ModelInfo
from serve.errors import ModelExists, NotFound

LIMIT = 1000


class StandIn(Engine):
    """Answers with what it received; records every request."""

    name = "stand-in"
    multi_model = True

    def __init__(self):
        self.seen, self.loaded, self.healthy = [], {}, True

    async def start(self):
        pass

    async def load(self, name, model_dir, url):
        if name in self.loaded:
            raise ModelExists(f"model {name!r} is already loaded")
        await asyncio.sleep(0.05)
        self.loaded[name] = ModelInfo(name, url, 1, True)
        return self.loaded[name]

    async def unload(self, name):
        if self.loaded.pop(name, None) is None:
            raise NotFound(f"model {name!r} is not loaded")

    def models(self):
        return list(self.loaded.values())

    async def infer(self, name, request):
        body = request.read()
        self.seen.append((name, request, body))
        return InferResponse(200, "application/json", json.dumps(
            {"model": name, "size": len(body), "type": request.content_type, "accept": request.accept,
             "attrs": request.custom_attributes, "spooled": request.body_path is not None}).encode())

    def health(self):
        return (True, "") if self.healthy else (False, "loading model")

    async def failed(self):
        await asyncio.Event().wait()

    async def drain(self, deadline):
        pass

    async def stop(self):
        pass

    def execution_parameters(self):
        return {"MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}


def run(check, multi_model=False, tmp_path=None, limit=LIMIT):
    async def main():
        engine = StandIn()
        spool = str(tmp_path) if tmp_path else "/tmp"
        front = Front(engine, max_body=limit, spool=spool, multi_model=multi_model,
                      model_root=str(tmp_path) if tmp_path else None)
        client = TestClient(TestServer(make_app(front)))
        await client.start_server()
        try:
            await check(client, engine, front)
        finally:
            await client.close()
    asyncio.run(main())


async def json_error(resp, status):
    assert resp.status == status
    assert resp.content_type == "application/json"
    doc = json.loads(await resp.read())
    assert doc["code"] == status and doc["message"]
    return doc


def test_invocations_reach_the_engine_with_their_headers():
    async def check(client, engine, front):
        resp = await client.post("/invocations", data=b"abc", headers={
            "Content-Type": "application/x-npy", "Accept": "text/csv",
            "X-Amzn-SageMaker-Custom-Attributes": "topk=2"})
        assert resp.status == 200
        got = json.loads(await resp.read())
        assert got == {"model": "model", "size": 3, "type": "application/x-npy", "accept": "text/csv",
                       "attrs": "topk=2", "spooled": False}
    run(check)


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_other_methods_on_invocations_get_405_and_never_reach_the_engine(method):
    async def check(client, engine, front):
        resp = await client.request(method, "/invocations", data=b"x")
        await json_error(resp, 405)
        assert resp.headers["Allow"] == "POST" and engine.seen == []
    run(check)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_ping_takes_get_and_head_only(method):
    async def check(client, engine, front):
        await json_error(await client.request(method, "/ping"), 405)
        assert (await client.head("/ping")).status == 200
    run(check)


def test_ping_is_503_while_loading_and_while_draining():
    async def check(client, engine, front):
        assert (await client.get("/ping")).status == 200
        engine.healthy = False
        assert json.loads(await (await client.get("/ping")).read())["status"] == "Loading"
        engine.healthy, front.draining = True, True
        resp = await client.get("/ping")
        assert resp.status == 503 and json.loads(await resp.read())["status"] == "Draining"
    run(check)


@pytest.mark.parametrize("path", ["/predictions/model", "/api-description", "/v1/models/model:predict",
                                  "/v2/models", "/models"])
def test_other_routes_are_404(path):
    async def check(client, engine, front):
        await json_error(await client.get(path), 404)
    run(check)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
def test_form_bodies_get_415(content_type):
    async def check(client, engine, front):
        await json_error(await client.post("/invocations", data=b"a=1", headers={"Content-Type": content_type}), 415)
        assert engine.seen == []
    run(check)


def test_a_body_over_the_limit_gets_413_with_or_without_a_length():
    async def check(client, engine, front):
        await json_error(await client.post("/invocations", data=b"x" * (LIMIT + 1)), 413)

        async def chunks():
            for _ in range(3):
                yield b"y" * (LIMIT // 2)
        await json_error(await client.post("/invocations", data=chunks()), 413)
        assert engine.seen == []
    run(check)


def test_a_large_body_is_spooled_to_disk_and_removed_after(tmp_path, monkeypatch):
    monkeypatch.setattr(app_mod, "INLINE_MAX", 100)
    monkeypatch.setattr(app_mod, "SPOOL_CHUNK", 64)
    body = os.urandom(5000)

    async def check(client, engine, front):
        resp = await client.post("/invocations", data=body, headers={"Content-Type": "application/x-npy"})
        got = json.loads(await resp.read())
        assert got["spooled"] and got["size"] == 5000
        assert engine.seen[0][2] == body
        assert os.listdir(tmp_path) == []
    run(check, tmp_path=tmp_path, limit=10_000)


class DiskFull:
    """A spool file on a full disk: every write fails with ENOSPC."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        self.f.close()


def test_a_body_the_disk_cannot_hold_gets_507_in_our_json_shape_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(app_mod, "INLINE_MAX", 100)
    monkeypatch.setattr(app_mod, "SPOOL_CHUNK", 64)
    real = os.fdopen
    monkeypatch.setattr(app_mod.os, "fdopen", lambda fd, mode: DiskFull(real(fd, mode)))

    async def check(client, engine, front):
        doc = await json_error(await client.post("/invocations", data=os.urandom(5000)), 507)
        assert "No space left" in doc["message"] and str(tmp_path) not in doc["message"]
        assert os.listdir(tmp_path) == [] and engine.seen == []
    run(check, tmp_path=tmp_path, limit=10_000)


def test_a_spool_folder_gone_gets_507(tmp_path, monkeypatch):
    monkeypatch.setattr(app_mod, "INLINE_MAX", 100)
    spool = tmp_path / "spool"

    async def check(client, engine, front):
        front.spool = str(spool)   # never created
        doc = await json_error(await client.post("/invocations", data=os.urandom(5000)), 507)
        assert str(spool) not in doc["message"] and engine.seen == []
    run(check, tmp_path=tmp_path, limit=10_000)


def test_an_unexpected_failure_is_a_json_500_logged_once(caplog):
    async def check(client, engine, front):
        async def broken(name, request):
            raise RuntimeError("a bug")
        engine.infer = broken
        doc = await json_error(await client.post("/invocations", data=b"x"), 500)
        assert "a bug" not in doc["message"]
        failed = [r for r in caplog.records if r.name == "serve.app" and r.exc_info]
        assert len(failed) == 1 and "RuntimeError: a bug" in caplog.text
        assert (await client.get("/ping")).status == 200
    run(check)


def test_execution_parameters():
    async def check(client, engine, front):
        resp = await client.get("/execution-parameters")
        assert json.loads(await resp.read())["BatchStrategy"] == "MULTI_RECORD"
    run(check)


# ---------------------------------------------------------------- the multi-model API
def test_multi_model_api(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()

    async def check(client, engine, front):
        assert (await client.get("/ping")).status == 200   # healthy with no model
        assert json.loads(await (await client.get("/models")).read()) == {"models": []}
        resp = await client.post("/models", json={"model_name": "a", "url": str(tmp_path / "a")})
        assert resp.status == 200
        assert json.loads(await resp.read())["status"] == 'Model "a" Version: 1.0 registered with 1 initial workers'
        await json_error(await client.post("/models", json={"model_name": "a", "url": str(tmp_path / "a")}), 409)
        await json_error(await client.post("/models", json={"model_name": "x", "url": "/no/such"}), 404)
        await json_error(await client.post("/models", data=b"not json"), 400)
        await json_error(await client.post("/models", json={"model_name": "x"}), 400)
        for name in ("b", "c"):
            assert (await client.post("/models", json={"model_name": name, "url": name})).status == 200
        page = json.loads(await (await client.get("/models?limit=2")).read())
        assert [m["modelName"] for m in page["models"]] == ["a", "b"] and page["nextPageToken"] == "2"
        rest = json.loads(await (await client.get("/models?limit=2&next_page_token=2")).read())
        assert rest == {"models": [{"modelName": "c", "modelUrl": "c"}]}
        described = json.loads(await (await client.get("/models/a")).read())
        assert described[0]["modelName"] == "a" and described[0]["modelUrl"] == str(tmp_path / "a")
        resp = await client.post("/models/b/invoke", data=b"xy", headers={
            "Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "b.tar.gz"})
        assert json.loads(await resp.read())["model"] == "b"
        resp = await client.delete("/models/b")
        assert json.loads(await resp.read()) == {"status": 'Model "b" unregistered'}
        await json_error(await client.delete("/models/b"), 404)
        await json_error(await client.post("/invocations", data=b"x"), 404)   # no real-time model here
    run(check, multi_model=True, tmp_path=tmp_path)


def test_two_concurrent_loads_of_one_name_one_gets_409(tmp_path):
    (tmp_path / "a").mkdir()

    async def check(client, engine, front):
        results = await asyncio.gather(*(client.post("/models", json={"model_name": "a", "url": "a"})
                                         for _ in range(2)))
        assert sorted(r.status for r in results) == [200, 409]
    run(check, multi_model=True, tmp_path=tmp_path)


@pytest.mark.parametrize("body", [b"[" * 100_000, b"not json", b"[1]", b"\xff"])
def test_a_load_request_that_is_not_a_json_object_gets_400(tmp_path, body):
    async def check(client, engine, front):
        await json_error(await client.post("/models", data=body), 400)
        assert engine.loaded == {}
    run(check, multi_model=True, tmp_path=tmp_path)


@pytest.mark.parametrize("name", [".", "..", "a/b", "a\nb", "a\x00b", "a\x7fb", "x" * 1025])
def test_a_model_name_that_cannot_be_a_path_segment_gets_400(tmp_path, name):
    (tmp_path / "a").mkdir()

    async def check(client, engine, front):
        await json_error(await client.post("/models", json={"model_name": name, "url": str(tmp_path / "a")}), 400)
        assert engine.loaded == {}
        # the longest name and one of other scripts load
        for good in ("x" * 1024, "m\u00e9\u4e2d", "a.b"):
            assert (await client.post("/models", json={"model_name": good, "url": str(tmp_path / "a")})).status == 200
    run(check, multi_model=True, tmp_path=tmp_path)


def test_a_load_request_over_1_mib_gets_413_in_our_json_shape(tmp_path):
    async def check(client, engine, front):
        resp = await client.post("/models", data=b"{" + b" " * (2 << 20) + b"}",
                                 headers={"Content-Type": "application/json"})
        await json_error(resp, 413)
        assert engine.loaded == {}
    run(check, multi_model=True, tmp_path=tmp_path)
