"""The TorchServe handler: SageMaker's model_fn/input_fn/predict_fn/output_fn
contract on top of TorchServe's batches.

TorchServe entry point: ``serve.handler:handle``. Each request of a batch keeps
its own Content-Type and Accept and fails alone: its response gets a 4xx/5xx
status and a JSON reason while the others in the batch succeed. Tracebacks stay
in the server log.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from serve import codecs, request_params, user_module
from serve.errors import BadRequest, HTTPError, InternalError, client_message

logger = logging.getLogger(__name__)

DEFAULT_ACCEPT = codecs.JSON


@dataclass
class Request:
    """One request of a TorchServe batch and what has been made of it so far."""

    idx: int
    body: Any
    content_type: str
    accept: str
    custom_attributes: str = ""
    data: Any = None
    prediction: Any = None
    output: bytes = b""
    output_type: str = DEFAULT_ACCEPT
    error: HTTPError | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.error is None


def _header(headers: dict, name: str) -> str:
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return ""


def _requests(data: list, context) -> list[Request]:
    out = []
    for idx, item in enumerate(data):
        headers = context.get_all_request_header(idx) if context else {}
        item = item or {}
        body = item.get("body") if "body" in item else item.get("data")
        out.append(
            Request(
                idx=idx,
                body=body,
                content_type=_header(headers, "content-type"),
                accept=_header(headers, "accept"),
                custom_attributes=_header(headers, "x-amzn-sagemaker-custom-attributes"),
            )
        )
    return out


def _accept_choice(accept: str) -> tuple[str, dict]:
    """What to pass to output_fn: the client's first choice (highest q, then
    order), JSON for */* or no Accept, as SageMaker's toolkit does; with the
    parameters of that choice other than q."""
    best, best_params, best_q = "", {}, -1.0
    for item in accept.split(","):
        mtype, params = codecs.parse_media_type(item)
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if mtype and q > best_q:
            best, best_params, best_q = mtype, params, q
    if best in ("", "*/*", "application/*"):
        return DEFAULT_ACCEPT, best_params
    return best, best_params


def _params_of(r: Request, accept_params: dict) -> dict:
    """CustomAttributes, overridden by the Accept parameters."""
    return {**request_params.parse_custom_attributes(r.custom_attributes), **accept_params}


class HandlerService:
    """BaseHandler-like: initialize once per worker, then handle batches."""

    def __init__(self):
        self.initialized = False
        self.fns: user_module.Functions | None = None
        self.model = None
        self.context = None

    # ------------------------------------------------------------ startup
    def initialize(self, context) -> None:
        props = context.system_properties
        model_dir = props.get("model_dir")
        _set_log_level()
        _limit_threads()
        _select_device(props.get("gpu_id"))
        self.context = context
        self.fns = user_module.resolve(model_dir, os.environ.get("SAGEMAKER_PROGRAM", "inference.py"))
        logger.info("handler functions: %s", self.fns.origin)
        start = time.monotonic()
        self.model = user_module.call(self.fns.model_fn, model_dir, context=context)
        logger.info("model loaded in %.1f s", time.monotonic() - start)
        self.initialized = True

    # ------------------------------------------------------------ per batch
    def handle(self, data: list, context) -> list[bytes]:
        self.context = context
        requests = _requests(data, context)
        with _busy_marker():
            if self.fns.transform_fn is not None:
                self.transform(requests)
            else:
                self.preprocess(requests)
                self.inference(requests)
                self.postprocess(requests)
        return [self.respond(r, context) for r in requests]

    def preprocess(self, requests: list[Request]) -> None:
        for r in requests:
            try:
                if r.body is None or len(r.body) == 0:
                    raise BadRequest("empty request body")
                r.data = user_module.call(
                    self.fns.input_fn, r.body, codecs.parse_media_type(r.content_type)[0],
                    context=self.context,
                )
            except HTTPError as exc:
                r.error = exc
            except Exception as exc:  # the request's fault: input_fn could not decode it
                logger.info("request %d rejected by input_fn: %s", r.idx, exc, exc_info=True)
                r.error = BadRequest(client_message(exc))

    def inference(self, requests: list[Request]) -> None:
        good = [r for r in requests if r.ok]
        if not good:
            return
        if self.fns.batched and len(good) > 1:
            try:
                preds = self._predict_batch([r.data for r in good])
                for r, p in zip(good, preds):
                    r.prediction = p
                return
            except Exception:
                # One bad input can sink a stacked batch: retry one by one so
                # only that request fails.
                logger.warning("batched predict failed; retrying one by one", exc_info=True)
        for r in good:
            self._predict_one(r)

    def postprocess(self, requests: list[Request]) -> None:
        for r in requests:
            if not r.ok:
                continue
            try:
                accept, params = _accept_choice(r.accept)
                with request_params.scoped(_params_of(r, params)):
                    out = user_module.call(self.fns.output_fn, r.prediction, accept, context=self.context)
                r.output, r.output_type = _as_response(out, accept)
            except HTTPError as exc:
                r.error = exc
            except Exception as exc:
                logger.error("output_fn failed for request %d", r.idx, exc_info=True)
                r.error = InternalError(f"output_fn failed ({type(exc).__name__})")

    def transform(self, requests: list[Request]) -> None:
        for r in requests:
            accept, params = _accept_choice(r.accept)
            try:
                ctype = codecs.parse_media_type(r.content_type)[0]
                with _inference_mode(), request_params.scoped(_params_of(r, params)):
                    out = user_module.call(
                        self.fns.transform_fn, self.model, r.body, ctype, accept, context=self.context
                    )
                r.output, r.output_type = _as_response(out, accept)
            except HTTPError as exc:
                r.error = exc
            except Exception as exc:
                logger.error("transform_fn failed for request %d", r.idx, exc_info=True)
                r.error = InternalError(f"transform_fn failed ({type(exc).__name__})")

    def respond(self, r: Request, context) -> bytes:
        if r.ok:
            if context is not None:
                context.set_response_content_type(r.idx, r.output_type)
            return r.output
        if context is not None:
            context.set_response_status(r.error.status, r.error.phrase, idx=r.idx)
            context.set_response_content_type(r.idx, codecs.JSON)
        return r.error.body()

    # ------------------------------------------------------------ helpers
    def _predict_batch(self, inputs: list) -> list:
        with _inference_mode():
            preds = user_module.call(self.fns.predict_fn, inputs, self.model, context=self.context)
        if not isinstance(preds, (list, tuple)) or len(preds) != len(inputs):
            raise InternalError("batched predict_fn must return one prediction per input")
        return list(preds)

    def _predict_one(self, r: Request) -> None:
        try:
            if self.fns.batched:
                r.prediction = self._predict_batch([r.data])[0]
            else:
                with _inference_mode():
                    r.prediction = user_module.call(
                        self.fns.predict_fn, r.data, self.model, context=self.context
                    )
        except HTTPError as exc:
            r.error = exc
        except Exception as exc:
            logger.error("predict_fn failed for request %d", r.idx, exc_info=True)
            r.error = InternalError(f"prediction failed ({type(exc).__name__})")


def _as_response(out, accept: str) -> tuple[bytes, str]:
    """output_fn may return bytes/str, or (body, content_type) as in the toolkit."""
    ctype = accept
    if isinstance(out, tuple) and len(out) == 2:
        out, ctype = out
    if isinstance(out, str):
        out = out.encode("utf-8")
    if not isinstance(out, (bytes, bytearray)):
        # A raw prediction: encode it as the client asked.
        out = codecs.encode(out, accept)
    return bytes(out), ctype


def _inference_mode():
    import torch

    return torch.inference_mode()


def _limit_threads() -> None:
    """One worker's share of the CPUs (OMP_NUM_THREADS, set by `serve`):
    workers x threads must not exceed the cores."""
    import torch

    raw = os.environ.get("OMP_NUM_THREADS", "")
    if raw.isdigit() and int(raw) > 0:
        torch.set_num_threads(int(raw))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set in this process


def _select_device(gpu_id) -> None:
    """Make 'cuda' mean this worker's GPU, so model_fn code that says
    torch.device('cuda') lands on TorchServe's gpu_id and not all on cuda:0."""
    import torch

    if gpu_id is not None and torch.cuda.is_available():
        torch.cuda.set_device(int(gpu_id))


def _set_log_level() -> None:
    raw = os.environ.get("SAGEMAKER_CONTAINER_LOG_LEVEL", "")
    level = int(raw) if raw.isdigit() else logging.INFO
    for name in ("serve", "handlers"):
        logging.getLogger(name).setLevel(level)


class _busy_marker:
    """A file that exists while this worker handles a batch: `serve` waits for
    none to be left before it stops TorchServe (drain on SIGTERM)."""

    def __enter__(self):
        status_dir = os.environ.get("BYOC_SERVE_STATUS_DIR")
        self.path = os.path.join(status_dir, f"busy-{os.getpid()}") if status_dir else None
        if self.path:
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o644))
            except OSError:
                self.path = None

    def __exit__(self, *exc):
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _report_load_failure(exc: BaseException) -> None:
    """Tell `serve` that the model cannot load, so it exits instead of letting
    TorchServe restart the worker forever."""
    status_dir = os.environ.get("BYOC_SERVE_STATUS_DIR")
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
            _report_load_failure(exc)
            raise
    if data is None:
        return None
    return _service.handle(data, context)
