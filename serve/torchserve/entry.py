"""TorchServe's handler entry, ``serve.torchserve.entry:handle``: its batches (request
bodies, headers in its Context) in, serve/handler.py's per-request answers out.

TorchServe-specific bookkeeping lives here: a busy marker file per worker while it
handles a batch (the engine drains on SIGTERM until none is left; the workers count
each other's to share the cores), and a marker when the model cannot load (the engine
stops instead of letting TorchServe restart the worker forever).
"""
from __future__ import annotations

import glob
import json
import logging
import os

from serve import codecs, config
from serve.handler import HandlerService, Request

logger = logging.getLogger(__name__)


def _header(headers: dict, name: str) -> str:
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return ""


def requests_of(data: list, context) -> list[Request]:
    """TorchServe's batch as our requests."""
    out = []
    for idx, item in enumerate(data):
        headers = context.get_all_request_header(idx) if context else {}
        item = item or {}
        body = item.get("body") if "body" in item else item.get("data")
        out.append(Request(idx=idx, body=body, content_type=_header(headers, "content-type"),
                           accept=_header(headers, "accept"),
                           custom_attributes=_header(headers, "x-amzn-sagemaker-custom-attributes")))
    return out


def respond(r: Request, context) -> bytes:
    """One request's body, with its status and type set in TorchServe's context."""
    if r.ok:
        if context is not None:
            context.set_response_content_type(r.idx, r.output_type)
        return r.output
    if context is not None:
        context.set_response_status(r.error.status, r.error.phrase, idx=r.idx)
        context.set_response_content_type(r.idx, codecs.JSON)
    return r.error.body()


def handle_batch(service: HandlerService, data: list, context) -> list[bytes]:
    """TorchServe has no hook after the answers: the last batch's proofs and rechecks
    (serve/optimize.py) run first."""
    service.after_reply()
    service.context = context
    requests = requests_of(data, context)
    settings = service.settings
    with busy_marker(settings.status_dir) as busy:
        service.run(requests, 0 if settings.threads else max(1, settings.cpus // max(1, busy.workers())))
    return [respond(r, context) for r in requests]


class busy_marker:
    """A file that exists while this worker handles a batch."""

    def __init__(self, status_dir: str | None):
        self.status_dir = status_dir
        self.path = os.path.join(status_dir, f"busy-{os.getpid()}") if status_dir else None

    def __enter__(self):
        if self.path:
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o644))
            except OSError:
                self.path = None
        return self

    def __exit__(self, *exc):
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def workers(self) -> int:
        """Workers handling a batch now, this one included."""
        if not self.path:
            return 1
        return max(1, len(glob.glob(os.path.join(self.status_dir, "busy-*"))))


def report_load_failure(exc: BaseException) -> None:
    """Tell the engine that the model cannot load."""
    status_dir = config.worker_settings().status_dir
    if not status_dir:
        return
    try:
        path = os.path.join(status_dir, f"load-failed-{os.getpid()}.json")
        with open(path, "w") as f:
            json.dump({"error": type(exc).__name__, "message": str(exc)[:2000]}, f)
    except OSError:
        logger.warning("could not write the load-failure marker", exc_info=True)


_service: HandlerService | None = None


def handle(data, context):
    """TorchServe's entry point: called with data=None once to initialize."""
    global _service
    if _service is None:
        _service = HandlerService()
    if not _service.initialized:
        try:
            _service.initialize(context)
        except Exception as exc:
            logger.error("model failed to load", exc_info=True)
            report_load_failure(exc)
            raise
    if data is None:
        return None
    return handle_batch(_service, data, context)
