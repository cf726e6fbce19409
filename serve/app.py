"""The front door: the one listener on the inference port, whatever engine runs the models.

It owns SageMaker's HTTP contract and answers everything outside it itself, always in
our JSON error shape ``{"error", "code", "message"}``:

- ``GET /ping``: 200 once the model can answer (multi-model: while the engine runs, a
  model loading or restarting holds up only itself); 503 while loading or draining;
- ``POST /invocations``: the real-time model; ``GET /execution-parameters`` (Batch Transform);
- with ``SAGEMAKER_MULTI_MODEL=true``: SageMaker's multi-model API (``GET/POST /models``,
  ``GET/DELETE /models/{name}``, ``POST /models/{name}/invoke``), when the engine offers it;
- 405 for another method, 404 for another route, 415 for form bodies (TorchServe form-decodes
  them and echoed the body in a 500), 413 over ``SAGEMAKER_MAX_PAYLOAD_IN_MB``.

Bodies: read as they arrive against the limit; one over INLINE_MAX is spooled to a file
as it streams in (an asynchronous-inference payload of up to 1 GB is never held in this
process) and the engine reads it from there. Slow clients cost a connection each, never
the event loop: /ping keeps answering.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import unicodedata

from aiohttp import web

from serve.config import MODEL_NAME
from serve.engine import Engine, InferRequest, InferResponse
from serve.errors import (BadRequest, HTTPError, InsufficientStorage, InternalError, MethodNotAllowed, ModelExists,
                          NotFound, PayloadTooLarge, UnsupportedMediaType)

logger = logging.getLogger("serve.app")

INLINE_MAX = 8 * 1024 * 1024     # larger bodies are spooled to disk as they arrive
SPOOL_CHUNK = 1024 * 1024        # written to the spool file in pieces of this size
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/")
PAGE_SIZE = 100                  # GET /models: models per page by default
LOAD_BODY_MAX = 1024 * 1024      # POST /models: its small JSON, read whole
MODEL_NAME_MAX = 1024            # POST /models: the longest model_name
ANSWER_STARTED = "serve.answer_started"   # request key: a streamed answer's headers are sent


def error_response(exc: HTTPError, headers: dict | None = None) -> web.Response:
    return web.Response(status=exc.status, body=exc.body(), content_type="application/json", headers=headers)


def json_response(payload, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json")


class Front:
    """The SageMaker routes, in front of an Engine."""

    def __init__(self, engine: Engine, *, max_body: int, spool: str, multi_model: bool = False,
                 model_root: str | None = None, draining: list | None = None):
        self.engine = engine
        self.max_body = max_body
        self.spool = spool
        self.multi_model = multi_model
        self.model_root = model_root      # multi-model: the folder that model URLs are read under
        self._draining = draining if draining is not None else []   # `serve`'s: non-empty once stopping
        self.loading: set[str] = set()    # multi-model: names being loaded now
        routes = {"/ping": "GET", "/execution-parameters": "GET"}
        if not multi_model:
            routes["/invocations"] = "POST"
        self.routes = routes

    # ------------------------------------------------------------ routing
    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if self.multi_model and (path == "/models" or path.startswith("/models/")):
            return await self.models_api(request)
        allowed = self.routes.get(path)
        if allowed is None:
            where = ("GET /ping, GET/POST /models and POST /models/{name}/invoke" if self.multi_model
                     else "GET /ping and POST /invocations")
            return error_response(NotFound(f"no route {path[:100]!r}: this server answers {where}"))
        if not _method_ok(request.method, allowed):
            return _not_allowed(request, allowed)
        if path == "/ping":
            return self.ping()
        if path == "/execution-parameters":
            return json_response(self.engine.execution_parameters())
        return await self.invoke(request, MODEL_NAME)

    @property
    def draining(self) -> bool:
        return bool(self._draining)

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining[:] = [True] if value else []

    def ping(self) -> web.Response:
        if self.draining:
            return json_response({"status": "Draining", "code": 503}, 503)
        healthy, why = self.engine.health()
        if not healthy:
            return json_response({"status": "Loading", "code": 503, "message": why}, 503)
        return json_response({"status": "Healthy"})

    async def invoke(self, request: web.Request, model: str) -> web.StreamResponse:
        if request.content_type.startswith(FORM_TYPES):
            return error_response(UnsupportedMediaType(
                f"Content-Type {request.content_type}: form bodies are not decoded; "
                "send the payload itself as the body, with its own Content-Type"))
        try:
            infer = await self.read_request(request)
        except HTTPError as exc:   # 413, 507: the rest of the body is unread
            return error_response(exc, {"Connection": "close"} if exc.status in (413, 507) else None)
        try:
            answer = await self.engine.infer(model, infer)
        finally:
            if infer.body_path:
                _unlink(infer.body_path)
        return await self.respond(request, answer)

    # ------------------------------------------------------------ bodies
    async def read_request(self, request: web.Request) -> InferRequest:
        """The request's body against the payload limit: in memory up to INLINE_MAX, spooled
        to a file beyond (the caller deletes it)."""
        too_large = PayloadTooLarge(
            f"the request body is over {self.max_body} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        if request.content_length is not None and request.content_length > self.max_body:
            raise too_large
        chunks, size, spooled = [], 0, None
        loop = asyncio.get_running_loop()
        try:
            async for chunk in request.content.iter_chunked(SPOOL_CHUNK):   # chunked bodies have no length
                size += len(chunk)
                if size > self.max_body:
                    raise too_large
                chunks.append(chunk)
                if spooled is None and size > INLINE_MAX:
                    spooled = _spool_file(self.spool)
                if spooled is not None and sum(map(len, chunks)) >= SPOOL_CHUNK:
                    data, chunks = b"".join(chunks), []
                    await _spool_write(loop, spooled[0], data)
            if spooled is not None:
                if chunks:
                    await _spool_write(loop, spooled[0], b"".join(chunks))
                spooled[0].close()
        except BaseException:
            if spooled is not None:
                try:
                    spooled[0].close()   # a full disk can fail the flush too
                except OSError:
                    pass
                _unlink(spooled[1])
            raise
        headers = request.headers
        return InferRequest(
            content_type=headers.get("Content-Type", ""), accept=headers.get("Accept", ""),
            custom_attributes=headers.get("X-Amzn-SageMaker-Custom-Attributes", ""),
            body=b"" if spooled else b"".join(chunks), body_path=spooled[1] if spooled else None, size=size)

    async def respond(self, request: web.Request, answer: InferResponse) -> web.StreamResponse:
        headers = {"Content-Type": answer.content_type or "application/octet-stream", **answer.headers}
        if answer.body_path is None:
            return web.Response(status=answer.status, body=answer.body, headers=headers)
        try:   # a large answer, written to a file by the worker: streamed, then deleted
            response = web.StreamResponse(status=answer.status, headers=headers)
            response.content_length = os.path.getsize(answer.body_path)
            await response.prepare(request)
            request[ANSWER_STARTED] = True   # from here an error can only cut the connection
            with open(answer.body_path, "rb") as f:
                while chunk := f.read(SPOOL_CHUNK):
                    await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            answer.discard()

    # ------------------------------------------------------------ multi-model API
    async def models_api(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if len(parts) == 1:   # /models
            if request.method == "POST":
                return await self.load(request)
            if _method_ok(request.method, "GET"):
                return self.list_models(request)
            return _not_allowed(request, "GET, POST")
        name = parts[1]
        if len(parts) == 3 and parts[2] == "invoke":
            if request.method != "POST":
                return _not_allowed(request, "POST")
            target = request.headers.get("X-Amzn-SageMaker-Target-Model")
            if target:
                logger.info("invoke %s (X-Amzn-SageMaker-Target-Model: %s)", name, target[:200])
            return await self.invoke(request, name)
        if len(parts) != 2:
            return error_response(NotFound(f"no route {request.path[:100]!r}"))
        if request.method == "DELETE":
            return await self.unload(name)
        if _method_ok(request.method, "GET"):
            return self.describe(name)
        return _not_allowed(request, "GET, DELETE")

    async def load(self, request: web.Request) -> web.Response:
        try:
            spec = json.loads(await request.read() or b"{}")
            name, url = spec.get("model_name"), spec.get("url")
        except web.HTTPRequestEntityTooLarge:   # aiohttp's own 413 is text/plain
            return error_response(PayloadTooLarge(
                f'the body is over {LOAD_BODY_MAX} bytes: it is JSON, {{"model_name": ..., "url": ...}}'),
                {"Connection": "close"})
        except (ValueError, AttributeError, RecursionError):   # RecursionError: JSON nested too deep
            return error_response(BadRequest('the body must be JSON: {"model_name": ..., "url": ...}'))
        if not isinstance(name, str) or not name or not isinstance(url, str) or not url:
            return error_response(BadRequest('the body must name the model and where it is: '
                                             '{"model_name": "name", "url": "/opt/ml/models/name/model"}'))
        # the name is a segment of /models/{name}: "." and ".." are normalised away by the
        # client or aiohttp, so such a model could never be invoked or deleted
        if (name in (".", "..") or "/" in name or len(name) > MODEL_NAME_MAX
                or any(unicodedata.category(c) == "Cc" for c in name)):
            return error_response(BadRequest(
                f'model_name {name[:100]!r}: not "." or "..", no "/" or control characters, '
                f"at most {MODEL_NAME_MAX} characters"))
        if name in self.loading or any(m.name == name for m in self.engine.models()):
            return error_response(ModelExists(f"model {name!r} is already loaded"))
        self.loading.add(name)
        try:
            model_dir = self.resolve_url(url)
            info = await self.engine.load(name, model_dir, url)
        except HTTPError as exc:
            return error_response(exc)
        finally:
            self.loading.discard(name)
        return json_response({"status": f'Model "{info.name}" Version: 1.0 registered with '
                                        f'{info.workers} initial workers'})

    def resolve_url(self, url: str) -> str:
        """The model folder a load request names: an absolute path, or one under the models
        root; 404 when it holds nothing (SageMaker's toolkit answers so)."""
        path = url if os.path.isabs(url) else os.path.join(self.model_root or "/", url)
        if not os.path.isdir(path):
            raise NotFound(f"no model at {url!r}: the folder does not exist")
        return path

    def list_models(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", PAGE_SIZE))
            start = int(request.query.get("next_page_token", "0") or 0)
        except ValueError:
            return error_response(BadRequest("limit and next_page_token are whole numbers"))
        if limit < 1 or start < 0:
            return error_response(BadRequest("limit must be at least 1 and next_page_token at least 0"))
        models = self.engine.models()
        page = [{"modelName": m.name, "modelUrl": m.url} for m in models[start:start + limit]]
        body = {"models": page}
        if start + limit < len(models):
            body["nextPageToken"] = str(start + limit)
        return json_response(body)

    def describe(self, name: str) -> web.Response:
        for m in self.engine.models():
            if m.name == name:
                return json_response([{"modelName": m.name, "modelUrl": m.url, "workers": m.workers,
                                       "status": "READY" if m.ready else "LOADING"}])
        return error_response(NotFound(f"model {name!r} is not loaded"))

    async def unload(self, name: str) -> web.Response:
        try:
            await self.engine.unload(name)
        except HTTPError as exc:
            return error_response(exc)
        return json_response({"status": f'Model "{name}" unregistered'})


def _method_ok(method: str, allowed: str) -> bool:
    return method in allowed.split(", ") or (method == "HEAD" and "GET" in allowed)


def _not_allowed(request: web.Request, allowed: str) -> web.Response:
    return error_response(MethodNotAllowed(f"{request.method} {request.path[:100]}: use {allowed}"),
                          {"Allow": allowed if "GET" not in allowed else allowed.replace("GET", "GET, HEAD")})


def _spool_file(folder: str):
    try:
        fd, path = tempfile.mkstemp(dir=folder, prefix="body-")
    except OSError as exc:
        raise _no_room(exc) from None
    return os.fdopen(fd, "wb"), path


async def _spool_write(loop, f, data: bytes) -> None:
    try:
        await loop.run_in_executor(None, f.write, data)
    except OSError as exc:
        raise _no_room(exc) from None


def _no_room(exc: OSError) -> InsufficientStorage:
    # the reason without the path: the spool folder is the server's business
    logger.warning("a request body could not be spooled: %s", exc)
    return InsufficientStorage(f"the request body could not be written to disk ({exc.strerror or 'I/O error'})")


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Any failure a route did not answer itself becomes our JSON 500, never aiohttp's text/plain
    one; the traceback is logged here, once."""
    try:
        return await handler(request)
    except (web.HTTPException, ConnectionResetError):   # aiohttp's own answers; a client gone
        raise
    except HTTPError as exc:
        return error_response(exc)
    except Exception:
        if request.get(ANSWER_STARTED):   # the status line is sent: only cutting the connection is left
            raise
        logger.exception("%s %s failed", request.method, request.path[:100])
        return error_response(InternalError("the server failed to answer this request (see its log)"))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def make_app(front: Front) -> web.Application:
    # client_max_size is aiohttp's own limit for request.read(); bodies are read against
    # max_body here, so it only has to let the small JSON of a load request through.
    app = web.Application(client_max_size=LOAD_BODY_MAX, middlewares=[json_errors])
    app.router.add_route("*", "/{tail:.*}", front.handle)
    return app
