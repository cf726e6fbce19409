"""The front door: the one listener on the inference port, in front of TorchServe.

TorchServe's inference API listens on 127.0.0.1 only. This process relays what
SageMaker sends (``GET /ping``, ``POST /invocations``, ``GET /execution-parameters``)
and answers everything else itself, always with a JSON reason.

Why a proxy of our own: TorchServe 0.12's Netty frontend acts on a request before
any handler or endpoint plugin sees it, in ways no setting changes (measured on
this image before the front existed):
- every method on /invocations goes to the model: PUT or PATCH with a photo ran it;
- application/x-www-form-urlencoded and multipart bodies are form-decoded by the
  frontend: a JPEG sent as a form got a 500 that echoed the body back;
- a body over ``max_request_size`` gets a 413 with an empty body;
- /predictions, /api-description and the KServe /v1, /v2 routes share the port.
An endpoint plugin cannot pass a request on to the model, so these checks sit here:
aiohttp's server and a pooled keep-alive client in one event loop, a few hundred
microseconds of CPU per request.

Run by ``serve`` (serve/server.py), in its own session: ``serve`` decides when it stops.
"""
from __future__ import annotations

import argparse
import asyncio
import logging

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from multidict import CIMultiDict

from serve.errors import (
    GatewayTimeout, HTTPError, MethodNotAllowed, NotFound, PayloadTooLarge, ServiceUnavailable,
    UnsupportedMediaType,
)

logger = logging.getLogger("serve.front")

# The SageMaker contract: path -> the one method it takes (HEAD goes with GET).
ROUTES = {"/ping": "GET", "/invocations": "POST", "/execution-parameters": "GET"}
# Per-connection headers (RFC 9110 7.6.1), those aiohttp sets itself, and Expect: the
# front door has already answered a client's "100-continue".
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length", "expect",
})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/")


def error_response(exc: HTTPError, headers: dict | None = None) -> web.Response:
    return web.Response(status=exc.status, body=exc.body(), content_type="application/json", headers=headers)


def _forwarded(headers) -> CIMultiDict:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


class Front:
    """Checks a request against the contract, then relays it to TorchServe."""

    def __init__(self, backend: str, max_body: int, timeout_s: float):
        self.backend = backend.rstrip("/")
        self.max_body = max_body
        # TorchServe answers a worker timeout itself after timeout_s: wait a little longer.
        self.timeout = ClientTimeout(total=timeout_s + 30, sock_connect=5)
        self.session: ClientSession | None = None

    async def open(self, _app: web.Application) -> None:
        # No connection cap: TorchServe queues and batches; a cap here would hide
        # requests from its batcher. No decompression: bodies pass through as sent.
        self.session = ClientSession(connector=TCPConnector(limit=0, force_close=False),
                                     timeout=self.timeout, auto_decompress=False)

    async def close(self, _app: web.Application) -> None:
        if self.session:
            await self.session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        allowed = ROUTES.get(request.path)
        if allowed is None:
            return error_response(NotFound(
                f"no route {request.path[:100]!r}: this server answers GET /ping and POST /invocations"))
        if request.method != allowed and not (allowed == "GET" and request.method == "HEAD"):
            return error_response(MethodNotAllowed(f"{request.method} {request.path}: use {allowed}"),
                                  {"Allow": allowed if allowed == "POST" else "GET, HEAD"})
        body = b""
        if request.method == "POST":
            if request.content_type.startswith(FORM_TYPES):
                return error_response(UnsupportedMediaType(
                    f"Content-Type {request.content_type}: form bodies are not decoded; "
                    "send the payload itself as the body, with its own Content-Type"))
            try:
                body = await self.read_body(request)
            except PayloadTooLarge as exc:
                return error_response(exc, {"Connection": "close"})
        return await self.relay(request, body)

    async def read_body(self, request: web.Request) -> bytes:
        too_large = PayloadTooLarge(
            f"the request body is over {self.max_body} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        if request.content_length is not None and request.content_length > self.max_body:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.content.iter_any():   # chunked bodies have no length
            size += len(chunk)
            if size > self.max_body:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def relay(self, request: web.Request, body: bytes) -> web.Response:
        try:
            async with self.session.request(request.method, self.backend + request.path_qs,
                                            data=body if request.method == "POST" else None,
                                            headers=_forwarded(request.headers)) as upstream:
                payload = await upstream.read()
                return web.Response(status=upstream.status, body=payload,
                                    headers=_forwarded(upstream.headers))
        except asyncio.TimeoutError:
            return error_response(GatewayTimeout("the model server did not answer in time"))
        except ClientError as exc:
            # Before TorchServe listens (start) and after it closed (stop): not ready.
            logger.debug("relay to %s failed: %r", self.backend, exc)
            return error_response(ServiceUnavailable("the model server is starting or stopping"))


def make_app(backend: str, max_body: int, timeout_s: float) -> web.Application:
    front = Front(backend, max_body, timeout_s)
    # client_max_size is aiohttp's own limit for request.read(); we read the
    # stream ourselves against max_body, so it only needs to not get in the way.
    app = web.Application(client_max_size=max_body + 1)
    app.on_startup.append(front.open)
    app.on_cleanup.append(front.close)
    app.router.add_route("*", "/{tail:.*}", front.handle)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serve.front", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="TorchServe's inference address, e.g. http://127.0.0.1:8083")
    parser.add_argument("--max-body", type=int, required=True, help="request body limit in bytes")
    parser.add_argument("--timeout", type=float, default=60, help="TorchServe's response timeout, s")
    parser.add_argument("--log-level", type=int, default=logging.INFO)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s [%(levelname)s] %(name)s - %(message)s")
    app = make_app(args.backend, args.max_body, args.timeout)
    # SIGTERM comes from `serve` once TorchServe has stopped: nothing is left in flight.
    web.run_app(app, host=args.host, port=args.port, access_log=None, shutdown_timeout=5,
                print=lambda *_: logger.info("front door on %s:%d -> %s", args.host, args.port, args.backend))


if __name__ == "__main__":
    main()
