"""The torchserve engine: TorchServe 0.12 (Java frontend, Python workers) on 127.0.0.1
behind our front door, which relays each request to it.

TorchServe 0.12 facts this works around:
- a worker whose model fails to load is restarted with back-off for ever: the handler
  writes a marker file on a failed load (entry.py) and the engine fails, so the
  container exits non-zero with the reason;
- its own /ping says healthy while workers still load: the front door answers /ping,
  from the management API's count of READY workers;
- `torchserve --foreground` is a Python launcher whose java child it neither signals
  nor reports the status of: we signal java ourselves;
- on SIGTERM java closes its listeners, then gives open connections a 2 s quiet period:
  a request still in a worker after that is dropped. So the engine first drains (no
  request queued or in a worker, by the management API and the workers' busy markers);
- it answers a worker that died or timed out with its own 500/507 "Worker died.": the
  engine answers 504 when the request took the whole timeout, else 503, in our shape.
"""
from __future__ import annotations

import asyncio
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time

import psutil
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector
from multidict import CIMultiDict

from serve import requirements
from serve.config import MODEL_NAME, ServeConfig
from serve.engine import Engine, InferRequest, InferResponse, ModelInfo
from serve.errors import GatewayTimeout, ModelExists, NotFound, ServiceUnavailable
from serve.torchserve import config as ts_config
from serve.torchserve import logconfig, modelstore

logger = logging.getLogger("serve.torchserve")

JAVA_STOP_S = 4.0  # seconds kept back from the grace period for java to stop
# Per-connection headers (RFC 9110 7.6.1) and those aiohttp sets itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length", "expect",
})


class TorchServeEngine(Engine):
    name = "torchserve"
    multi_model = False
    stop_margin_s = JAVA_STOP_S + 1   # java needs ~2 s to stop after the drain

    def __init__(self, cfg: ServeConfig, workdir: str):
        self.cfg, self.workdir = cfg, workdir
        self.status_dir = os.path.join(workdir, "status")
        self.extra_env: dict = {}
        self.proc: subprocess.Popen | None = None
        self.session: ClientSession | None = None
        self.model: ModelInfo | None = None
        self.ready = False
        self._fatal: asyncio.Future = asyncio.get_running_loop().create_future()
        self._loaded: asyncio.Future = asyncio.get_running_loop().create_future()
        self._watcher: asyncio.Task | None = None

    # ------------------------------------------------------------ Engine
    async def start(self) -> None:
        # No connection cap: TorchServe queues and batches; a cap here would hide
        # requests from its batcher. No decompression: bodies pass through as sent.
        self.session = ClientSession(connector=TCPConnector(limit=0), auto_decompress=False,
                                     timeout=ClientTimeout(total=self.cfg.timeout_s + 30, sock_connect=5))

    async def load(self, name: str, model_dir: str, url: str) -> ModelInfo:
        if self.proc is not None:
            raise ModelExists("the torchserve engine serves one model")
        try:
            site = await asyncio.get_running_loop().run_in_executor(
                None, requirements.install, model_dir, os.path.join(self.workdir, "site-packages"),
                self.cfg.install_requirements)
        except requirements.RequirementsError as exc:
            self._fail(str(exc))
            raise ServiceUnavailable(str(exc)) from None
        if site:   # its workers import the model's packages from here first
            self.extra_env["PYTHONPATH"] = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)
        command = self._prepare(model_dir)
        logger.info("starting TorchServe: %s", " ".join(command))
        # Own session: a Ctrl-C in a terminal reaches `serve` only, which decides what
        # TorchServe gets and when.
        self.proc = subprocess.Popen(command, env=self._env(), cwd=self.workdir, start_new_session=True)
        self.model = ModelInfo(name, url, self.cfg.workers, False)
        self._watcher = asyncio.ensure_future(self._watch())
        await self._loaded
        return ModelInfo(name, url, self.cfg.workers, True)

    async def unload(self, name: str) -> None:
        raise NotFound("the torchserve engine serves one model and does not unload it")

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(self.model.name, self.model.url, self.model.workers, self.ready)] if self.model else []

    async def infer(self, name: str, request: InferRequest) -> InferResponse:
        if self.model is None or name != self.model.name:
            return InferResponse.error(NotFound(f"model {name!r} is not loaded"))
        headers = CIMultiDict()
        for key, value in (("Content-Type", request.content_type), ("Accept", request.accept),
                           ("X-Amzn-SageMaker-Custom-Attributes", request.custom_attributes)):
            if value:
                headers[key] = value
        started = time.monotonic()
        body = open(request.body_path, "rb") if request.body_path else request.body
        try:
            async with self.session.post(ts_config.backend_url(self.cfg) + "/invocations", data=body,
                                         headers=headers) as upstream:
                payload = await upstream.read()
                status, ctype = upstream.status, upstream.headers.get("Content-Type", "")
                kept = {k: v for k, v in upstream.headers.items()
                        if k.lower() not in HOP_BY_HOP and k.lower() != "content-type"}
        except asyncio.TimeoutError:
            return InferResponse.error(GatewayTimeout("the model server did not answer in time"))
        except ClientError as exc:
            logger.debug("relay to TorchServe failed: %r", exc)
            return InferResponse.error(ServiceUnavailable("the model server is starting or stopping"))
        finally:
            if request.body_path:
                body.close()
        own_error = _torchserve_error(status, payload)
        if own_error:   # TorchServe's own answer, not the handler's: a worker died or timed out
            if time.monotonic() - started >= self.cfg.timeout_s:
                return InferResponse.error(GatewayTimeout(
                    f"the model did not answer within {self.cfg.timeout_s} s (SAGEMAKER_MODEL_SERVER_TIMEOUT)"))
            return InferResponse.error(ServiceUnavailable(f"the model server could not answer: {own_error}"))
        return InferResponse(status, ctype, payload, headers=kept)

    def health(self) -> tuple[bool, str]:
        return (True, "") if self.ready else (False, "TorchServe is loading the model")

    async def failed(self) -> str:
        return await self._fatal

    async def drain(self, deadline: float) -> None:
        """Until no request is queued or in a worker, twice in a row."""
        loop = asyncio.get_running_loop()
        quiet, start = 0, loop.time()
        logger.info("draining: waiting for queued and running requests (up to %.0f s)", deadline - start)
        while loop.time() < deadline and self.proc is not None and self.proc.poll() is None:
            quiet = quiet + 1 if (not self._busy() and await self._pending() == 0) else 0
            if quiet >= 2:
                logger.info("drained: no request queued or running after %.1f s", loop.time() - start)
                return
            await asyncio.sleep(0.1)   # TorchServe tells no one when it is idle: ask
        logger.warning("drain: requests still in flight at the end of the grace period")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.proc is not None and self.proc.poll() is None:
            java = self._java()
            logger.info("stopping TorchServe")
            try:
                (java.send_signal if java else self.proc.send_signal)(signal.SIGTERM)
            except (psutil.Error, ProcessLookupError):
                pass
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, JAVA_STOP_S + 2)
            except subprocess.TimeoutExpired:
                logger.warning("TorchServe did not stop in time: killing it")
            self._kill_group()
        if self.session is not None:
            await self.session.close()

    def execution_parameters(self) -> dict:
        return self.cfg.execution_parameters()

    # ------------------------------------------------------------ the process
    def _prepare(self, model_dir: str) -> list[str]:
        """Work dir, model store (links, no copy), config.properties, log4j2.xml; the command."""
        for sub in ("tmp", "logs", "status"):
            os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)
        store = os.path.join(self.workdir, "model-store")
        os.makedirs(store, exist_ok=True)
        modelstore.build(model_dir, store)
        config_path = os.path.join(self.workdir, "config.properties")
        with open(config_path, "w") as f:
            f.write(ts_config.render(self.cfg, store))
        log_config = os.path.join(self.workdir, "log4j2.xml")
        with open(log_config, "w") as f:
            f.write(logconfig.render(self.cfg.log_level))
        return [sys.executable, "-m", "ts.model_server", "--foreground", "--ts-config", config_path,
                "--model-store", store, "--log-config", log_config, "--disable-token-auth", "--ncs"]

    def _env(self) -> dict:
        tmp = os.path.join(self.workdir, "tmp")
        return {
            **os.environ, **self.cfg.worker_env(), **self.extra_env,
            # The launcher keeps its pid file in the temp dir, java its model links:
            # keep both in our work dir (several servers per host).
            "TMPDIR": tmp, "TEMP": tmp,
            "LOG_LOCATION": os.path.join(self.workdir, "logs"),
            "METRICS_LOCATION": os.path.join(self.workdir, "logs"),
            "BYOC_SERVE_STATUS_DIR": self.status_dir,
        }

    async def _watch(self) -> None:
        """TorchServe pushes nothing: ask it whether the model is loaded (backing off to
        every 2 s), then keep watching for it to die or a restarted worker to fail."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.startup_timeout_s
        delay = 0.2
        while True:
            failure = self._failure()
            if failure:
                self._fail(failure)
                return
            if not self.ready:
                if await self._ready_workers() >= self.cfg.workers:
                    self.ready = True
                    logger.info("model loaded, %d worker(s) ready", self.cfg.workers)
                    if not self._loaded.done():
                        self._loaded.set_result(True)
                elif loop.time() > deadline:
                    self._fail(f"the model was not ready after {self.cfg.startup_timeout_s} s "
                               "(BYOC_SERVE_STARTUP_TIMEOUT)")
                    return
            await asyncio.sleep(delay if not self.ready else 0.5)
            delay = min(delay * 1.5, 2.0)

    def _fail(self, reason: str) -> None:
        if not self._loaded.done():
            self._loaded.set_exception(ServiceUnavailable(reason))
            self._loaded.exception()
        if not self._fatal.done():
            self._fatal.set_result(reason)

    def _failure(self) -> str | None:
        if self.proc.poll() is not None:
            return f"TorchServe exited (status {self.proc.returncode})"
        for path in sorted(glob.glob(os.path.join(self.status_dir, "load-failed-*.json"))):
            try:
                with open(path) as f:
                    info = json.load(f)
                return f"the model failed to load: {info.get('error')}: {info.get('message')}"
            except (OSError, ValueError):
                return "the model failed to load"
        return None

    async def _describe(self) -> list | None:
        url = f"http://127.0.0.1:{self.cfg.management_port}/models/{MODEL_NAME}"
        try:
            async with self.session.get(url, timeout=ClientTimeout(total=2)) as resp:
                return await resp.json(content_type=None) if resp.status == 200 else None
        except (ClientError, asyncio.TimeoutError, ValueError):
            return None

    async def _ready_workers(self) -> int:
        info = await self._describe()
        if not info:
            return 0
        return sum(w.get("status") == "READY" for w in info[0].get("workers", []))

    async def _pending(self) -> int:
        info = await self._describe()
        if not info:
            return 0
        return int(info[0].get("jobQueueStatus", {}).get("pendingRequests", 0))

    def _busy(self) -> bool:
        return bool(glob.glob(os.path.join(self.status_dir, "busy-*")))

    def _java(self) -> psutil.Process | None:
        try:
            for child in psutil.Process(self.proc.pid).children():
                if "java" in os.path.basename(child.exe() or child.name()):
                    return child
        except psutil.Error:
            pass
        return None

    def _kill_group(self) -> None:
        """Whatever is left of TorchServe's session (java, workers) goes."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _torchserve_error(status: int, payload: bytes) -> str | None:
    """TorchServe's own error body ({"code", "type", "message"}), not one of our handler's
    ({"error", "code", "message"}): its message; None otherwise."""
    if status < 500:
        return None
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if isinstance(body, dict) and "type" in body and "error" not in body:
        return str(body.get("message") or body.get("type"))[:300]
    return None

