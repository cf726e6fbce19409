"""The front door (serve/front.py) against a stand-in for TorchServe: what it
answers itself, and that what it relays arrives unchanged both ways."""
from __future__ import annotations

import asyncio
import json

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from serve.front import make_app  # noqa: E402

LIMIT = 1000


def backend_app(seen: list) -> web.Application:
    """Answers like TorchServe would, and records what reached it."""

    async def invocations(request):
        body = await request.read()
        seen.append((request.method, request.path_qs, dict(request.headers), body))
        return web.Response(status=200, body=b"echo:" + body, content_type="application/json",
                            headers={"X-Amzn-SageMaker-Custom-Attributes": "topk=2", "x-request-id": "abc"})

    async def ping(request):
        seen.append((request.method, request.path, {}, b""))
        return web.json_response({"status": "Healthy"}, status=200)

    async def slow(request):
        await asyncio.sleep(5)
        return web.Response(text="late")

    app = web.Application(client_max_size=10 * LIMIT)
    app.router.add_post("/invocations", invocations)
    app.router.add_get("/ping", ping)
    app.router.add_get("/execution-parameters", slow)
    return app


def run(check, backend=True, timeout_s=60):
    """Start the stand-in backend (or none) and the front; run check(client, seen)."""
    async def main():
        seen = []
        servers = []
        if backend:
            back = TestServer(backend_app(seen))
            await back.start_server()
            servers.append(back)
            url = str(back.make_url("")).rstrip("/")
        else:
            url = "http://127.0.0.1:9"   # discard port: nothing listens
        client = TestClient(TestServer(make_app(url, LIMIT, timeout_s)))
        await client.start_server()
        try:
            await check(client, seen)
        finally:
            await client.close()
            for s in servers:
                await s.close()
    asyncio.run(main())


async def json_error(resp, status):
    assert resp.status == status
    assert resp.content_type == "application/json"
    doc = json.loads(await resp.read())
    assert doc["code"] == status and doc["message"]
    return doc


def test_post_invocations_is_relayed_with_its_headers_both_ways():
    async def check(client, seen):
        resp = await client.post("/invocations?x=1", data=b"\xff\xd8jpeg",
                                 headers={"Content-Type": "image/jpeg", "Accept": "application/json",
                                          "X-Amzn-SageMaker-Custom-Attributes": "topk=3"})
        assert resp.status == 200 and await resp.read() == b"echo:\xff\xd8jpeg"
        assert resp.headers["X-Amzn-SageMaker-Custom-Attributes"] == "topk=2"
        assert resp.headers["x-request-id"] == "abc"
        method, path, headers, body = seen[-1]
        assert (method, path, body) == ("POST", "/invocations?x=1", b"\xff\xd8jpeg")
        assert headers["Content-Type"] == "image/jpeg" and headers["Accept"] == "application/json"
        assert headers["X-Amzn-SageMaker-Custom-Attributes"] == "topk=3"
    run(check)


def test_an_empty_post_is_relayed_for_the_handler_to_judge():
    async def check(client, seen):
        resp = await client.post("/invocations", data=b"", headers={"Content-Type": "image/jpeg"})
        assert resp.status == 200 and seen[-1][3] == b""
    run(check)


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
def test_other_methods_on_invocations_get_405_and_never_reach_the_model(method):
    async def check(client, seen):
        resp = await client.request(method, "/invocations", data=b"\xff\xd8jpeg")
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        if method != "HEAD":
            await json_error(resp, 405)
        assert seen == []
    run(check)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_ping_takes_get_only(method):
    async def check(client, seen):
        await json_error(await client.request(method, "/ping"), 405)
        resp = await client.get("/ping")
        assert resp.status == 200 and json.loads(await resp.read()) == {"status": "Healthy"}
    run(check)


@pytest.mark.parametrize("path", ["/", "/predictions/model", "/api-description", "/v1/models/model:predict",
                                  "/v2/models/model/infer", "/models", "/metrics", "/invocations/x"])
def test_torchserve_routes_are_not_served(path):
    async def check(client, seen):
        for method in ("GET", "POST"):
            await json_error(await client.request(method, path, data=b"{}"), 404)
        assert seen == []
    run(check)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "Multipart/Mixed; boundary=y"])
def test_form_bodies_get_415(content_type):
    async def check(client, seen):
        doc = await json_error(await client.post("/invocations", data=b"a=1&b=2",
                                                 headers={"Content-Type": content_type}), 415)
        assert "form" in doc["message"]
        assert seen == []
    run(check)


def test_a_body_over_the_limit_gets_413_json_with_or_without_a_length():
    async def chunks():
        for _ in range(5):
            yield b"x" * 300

    async def check(client, seen):
        doc = await json_error(await client.post("/invocations", data=b"x" * (LIMIT + 1),
                                                 headers={"Content-Type": "image/jpeg"}), 413)
        assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in doc["message"]
        # chunked: no Content-Length, the limit is found while reading
        await json_error(await client.post("/invocations", data=chunks(),
                                           headers={"Content-Type": "image/jpeg"}), 413)
        assert seen == []
        resp = await client.post("/invocations", data=b"x" * LIMIT, headers={"Content-Type": "image/jpeg"})
        assert resp.status == 200   # exactly at the limit passes
    run(check)


def test_no_backend_gives_503_json_not_a_reset():
    async def check(client, seen):
        doc = await json_error(await client.get("/ping"), 503)
        assert "starting or stopping" in doc["message"]
        await json_error(await client.post("/invocations", data=b"x", headers={"Content-Type": "image/jpeg"}), 503)
    run(check, backend=False)


def test_a_backend_slower_than_the_timeout_gives_504():
    async def check(client, seen):
        await json_error(await client.get("/execution-parameters"), 504)
    run(check, timeout_s=-29)   # the front waits timeout_s + 30 s: 1 s here
