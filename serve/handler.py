"""The handler service: SageMaker's model_fn/input_fn/predict_fn/output_fn (or
transform_fn) contract run on a batch of requests, whichever engine brought them
(serve/worker.py for the python engine, serve/torchserve/entry.py for TorchServe).

Each request of a batch keeps its own Content-Type and Accept and fails alone: it gets
a 4xx/5xx status and a JSON reason while the others in the batch succeed. Tracebacks
stay in the server log.
"""
from __future__ import annotations

import contextlib
import functools
import linecache
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from serve import codecs, config, optimize, request_params, user_module
from serve.errors import BadRequest, HTTPError, InternalError, NotAcceptable, PayloadTooLarge, client_message

logger = logging.getLogger(__name__)

DEFAULT_ACCEPT = codecs.JSON


def _no_preference(accept: str | None) -> bool:
    """No Accept, or only */*: the client takes whatever the server answers by default."""
    return not accept or all(codecs.parse_media_type(item)[0] in ("", "*/*") for item in accept.split(","))


def default_accept(content_type: str) -> str:
    """What a request gets with no Accept (or */*): SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT when
    set (as SageMaker's toolkit); else JSON, but JSON lines for JSON lines (Batch Transform's
    SplitType Line + AssembleWith Line: one answer line per record)."""
    chosen = config.worker_settings().default_accept
    if chosen:
        return chosen
    return codecs.JSONLINES if codecs.parse_media_type(content_type)[0] == codecs.JSONLINES else DEFAULT_ACCEPT


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


def _params_of(r: Request, accept_params: dict) -> dict:
    """CustomAttributes, overridden by the Accept parameters."""
    return {**request_params.parse_custom_attributes(r.custom_attributes), **accept_params}


class HandlerService:
    """BaseHandler-like: initialize once per worker, then handle batches."""

    def __init__(self):
        self.initialized = False
        self.fns: user_module.Functions | None = None
        self.model = None
        self.forward: optimize.ModelForward | None = None  # the model's wrapped forward, when optimised
        self.context = None
        self.settings: config.WorkerSettings | None = None
        self.threads = 0  # torch intra-op threads in use
        self.draining = False

    # ------------------------------------------------------------ startup
    def initialize(self, context) -> None:
        props = context.system_properties
        model_dir = props.get("model_dir")
        config.worker_settings.cache_clear()  # read once per worker, as it starts
        self.settings = config.worker_settings()
        _set_log_level(self.settings.log_level)
        _limit_image_pixels(self.settings.max_image_pixels)
        self._use_threads(self.settings.threads or self.settings.cpus)
        _select_device(props.get("gpu_id"))
        self.context = context
        self.fns = user_module.resolve(model_dir, self.settings.program)
        logger.info("handler functions: %s", self.fns.origin)
        start = time.monotonic()
        self.model = user_module.call(self.fns.model_fn, model_dir, context=context)
        logger.info("model loaded in %.1f s", time.monotonic() - start)
        _warn_if_training(self.model, self.fns)
        self.forward = optimize.optimize(self.model, graph=self.settings.optimize_model,
                                         merge=self.settings.merge_calls, batch_size=props.get("batch_size") or 1)
        self.initialized = True

    # ------------------------------------------------------------ per batch
    def run(self, requests: list[Request], threads: int = 0) -> None:
        """Answer one batch: each request gets its output or its error; ``threads``: torch's
        intra-op threads for it (0: as they are)."""
        if threads:
            self._use_threads(threads)
        if self.fns.transform_fn is not None:
            self.transform(requests)
        else:
            self.preprocess(requests)
            self.inference(requests)
            self.postprocess(requests)

    def after_reply(self) -> None:
        """What the optimisation left for after the answers (serve/optimize.py): its proofs
        and rechecks. The engine calls it once a batch's answers have gone."""
        if self.forward is not None and not self.draining:
            self.forward.after_reply()

    def drain(self) -> None:
        """The server is stopping: answer what comes, prove and recheck nothing more."""
        self.draining = True
        if self.forward is not None:
            self.forward.pending.clear()

    def preprocess(self, requests: list[Request]) -> None:
        for r in requests:
            with _failures(r, "input_fn"):
                if r.body is None or len(r.body) == 0:
                    raise BadRequest("empty request body")
                r.data = user_module.call(
                    self.fns.input_fn, r.body, codecs.parse_media_type(r.content_type)[0],
                    context=self.context,
                )

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
        calls = [functools.partial(self._predict_into, r) for r in good]
        if self.forward is not None:
            # each predict_fn call still gets its own input; their model calls run as one batch
            self.forward.together(calls)
            return
        for call in calls:
            call()

    def _predict_into(self, r: Request) -> None:
        with _failures(r, "predict_fn"):
            r.prediction = self._predict_one(r.data)

    def postprocess(self, requests: list[Request]) -> None:
        for r in requests:
            if r.ok:
                self._negotiate(r, "output_fn", lambda accept, r=r: user_module.call(
                    self.fns.output_fn, r.prediction, accept, context=self.context))

    def transform(self, requests: list[Request]) -> None:
        for r in requests:
            ctype = codecs.parse_media_type(r.content_type)[0]

            def produce(accept, r=r, ctype=ctype):
                with _inference_mode():
                    return user_module.call(self.fns.transform_fn, self.model, r.body, ctype, accept,
                                            context=self.context)

            self._negotiate(r, "transform_fn", produce)

    # ------------------------------------------------------------ helpers
    def _negotiate(self, r: Request, stage: str, produce) -> None:
        """The response in the client's most preferred type that ``produce``
        (output_fn, transform_fn) makes: each acceptable type in turn.

        A type it refuses (NotAcceptable, or any exception while the default
        type works) is skipped; a request whose every type is refused gets 406
        with the list tried. When it fails for the default type too, the
        user's function is broken: 500."""
        refused, default_works, default = [], None, default_accept(r.content_type)
        choices = codecs.accept_choices(r.accept, default)
        # JSON lines is the default for a JSON-lines request; an output_fn written for JSON
        # alone (SageMaker's toolkit asks it for JSON) then answers in JSON instead of failing
        fallback = default == codecs.JSONLINES and not config.worker_settings().default_accept \
            and _no_preference(r.accept)
        if fallback:
            choices.append((DEFAULT_ACCEPT, {}))
        with _failures(r, stage):
            for accept, params in choices:
                try:
                    with request_params.scoped(_params_of(r, params)):
                        r.output, r.output_type = _as_response(produce(accept), accept)
                    return
                except NotAcceptable:
                    refused.append(accept)
                except HTTPError:
                    raise  # a 4xx of the user's or ours (a bad topk): the answer
                except Exception as exc:
                    logger.info("%s refused %s for request %d: %r", stage, accept, r.idx, exc)
                    refused.append(accept)
                    if fallback and accept == default:
                        continue
                    if default_works is None:
                        default_works = accept != default and self._produces_default(r, produce, default)
                    if not default_works:
                        raise
            raise NotAcceptable(
                f"cannot produce {r.accept[:200]!r}; tried: {', '.join(refused)[:200] or 'none of its types'}"
                f" (the default is {default})")

    @staticmethod
    def _produces_default(r: Request, produce, default: str) -> bool:
        """Whether ``produce`` answers in the default type: tells a type it does
        not make from a broken function (only on the error path)."""
        try:
            with request_params.scoped(_params_of(r, {})):
                _as_response(produce(default), default)
            return True
        except Exception:
            return False

    def _predict_batch(self, inputs: list) -> list:
        with _inference_mode():
            preds = user_module.call(self.fns.predict_fn, inputs, self.model, context=self.context)
        if not isinstance(preds, (list, tuple)) or len(preds) != len(inputs):
            raise InternalError("batched predict_fn must return one prediction per input")
        return list(preds)

    def _predict_one(self, data):
        if self.fns.batched:
            return self._predict_batch([data])[0]
        with _inference_mode():
            return user_module.call(self.fns.predict_fn, data, self.model, context=self.context)

    def _use_threads(self, n: int) -> None:
        """torch's intra-op threads for the next batch (a no-op when unchanged)."""
        if n != self.threads:
            import torch

            if not self.threads:  # first call: the worker runs one op at a time
                with contextlib.suppress(RuntimeError):
                    torch.set_num_interop_threads(1)
            torch.set_num_threads(n)
            self.threads = n


@contextlib.contextmanager
def _failures(r: Request, stage: str):
    """Whatever one request's stage raises becomes that request's HTTP error;
    the batch goes on."""
    try:
        yield
    except Exception as exc:
        r.error = http_error(exc, stage, r.idx)


def http_error(exc: BaseException, stage: str, idx: int = 0) -> HTTPError:
    """The answer for an exception from a stage of the contract.

    - our errors and the user's HTTPError: as raised;
    - a decompression bomb (PIL inside user code, with the workers' pixel limit): 413;
    - input_fn: 400, the request could not be decoded;
    - predict_fn: 400 when torch refuses what input_fn made of the request (a
      wrong shape or dtype for the network: raised inside torch); 500 for out of
      memory, CUDA errors, and what the user's own code raises;
    - output_fn / transform_fn: 500 (406 is decided in HandlerService._negotiate).
    Tracebacks go to the log, never to the client."""
    if isinstance(exc, HTTPError):
        return exc
    if _is_decompression_bomb(exc):
        logger.info("request %d: %s hit the image pixel limit: %s", idx, stage, exc)
        return PayloadTooLarge(
            f"image is too large to decode (limit {config.worker_settings().max_image_pixels} "
            "pixels, BYOC_MAX_IMAGE_PIXELS)")
    if stage == "input_fn":
        logger.info("request %d rejected by input_fn: %s", idx, exc, exc_info=True)
        return BadRequest(client_message(exc))
    if stage == "predict_fn" and _rejects_input(exc):
        logger.info("request %d: the model rejected its input: %s", idx, exc, exc_info=True)
        return BadRequest(f"the model rejected the input: {client_message(exc)}")
    logger.error("%s failed for request %d", stage, idx, exc_info=exc)
    what = "prediction" if stage == "predict_fn" else stage
    if stage == "predict_fn" and sys.modules.get("torch") is not None and _compiler_failure(exc):
        return InternalError(f"the model failed to compile (torch.compile: {type(exc).__name__}); "
                             "the server log has the reason")
    return InternalError(f"{what} failed ({type(exc).__name__})")


def _rejects_input(exc: BaseException) -> bool:
    """Whether torch itself refused the data (the innermost frame is torch's
    code: a wrong shape or dtype for the network), not out of memory, a CUDA
    fault or a compiler failure (a kernel "not implemented for 'Bool'" is a wrong
    dtype). An exception that the user's own code raises stays a 500."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(exc, (TypeError, ValueError, IndexError, RuntimeError)):
        return False
    if isinstance(exc, (RecursionError, torch.OutOfMemoryError)) or _compiler_failure(exc):
        return False
    text = str(exc).lower()
    if any(s in text for s in ("out of memory", "can't allocate memory", "cuda error", "cudnn", "nccl")):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    if tb.tb_frame.f_code.co_filename.startswith(torch_dir):
        return True
    # A torch op called straight from the user's forward (x @ w, torch.matmul): its C code
    # raised on the line of the call. Not a raise statement of the user's own, and in torch's
    # words for a shape or dtype it cannot take.
    line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).lstrip()
    return isinstance(exc, RuntimeError) and not line.startswith("raise") and _SHAPE_OR_DTYPE.search(text) is not None


_SHAPE_OR_DTYPE = re.compile(r"shapes? .*(cannot|must|mismatch)|size of tensor|must match the size|dimension|"
                             r"expected .*(dtype|scalar type|input|size|shape)|not implemented for '")


def _compiler_failure(exc: BaseException) -> bool:
    """torch.compile (dynamo, inductor) failing: the server's fault, never the request's."""
    tb, torch_dir = exc.__traceback__, os.path.dirname(sys.modules["torch"].__file__) + os.sep
    compiler_dirs = tuple(os.path.join(torch_dir, d) + os.sep for d in ("_dynamo", "_inductor"))
    if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
        return True
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(compiler_dirs):
            return True
        tb = tb.tb_next
    return False


def _is_decompression_bomb(exc: BaseException | None) -> bool:
    """PIL's bomb error or warning (an error in the workers) anywhere in the
    exception's chain: user code often re-raises it as its own ValueError."""
    image = sys.modules.get("PIL.Image")
    if image is None:
        return False
    bombs = (image.DecompressionBombError, image.DecompressionBombWarning)
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, bombs):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


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


def _warn_if_training(model, fns: user_module.Functions) -> None:
    """A model_fn that returns a model in training mode (dropout on, batch norm on batch
    statistics): the default predict_fn calls model.eval(), as SageMaker's toolkit does;
    the user's own predict_fn runs it as it is, so the same input can get other answers."""
    if not getattr(model, "training", False) or not callable(getattr(model, "eval", None)):
        return
    own = fns.transform_fn is not None or not getattr(fns.predict_fn, "__module__", "").startswith("handlers.")
    logger.warning("model_fn returned a model in training mode (dropout and batch norm act as in training): %s",
                   "your predict_fn/transform_fn runs it as it is, so the same input can get different "
                   "answers: call model.eval() in model_fn" if own else
                   "the default predict_fn puts it in eval mode")


def _inference_mode():
    import torch

    return torch.inference_mode()


def _limit_image_pixels(max_pixels: int) -> None:
    """PIL inside user code gets the pixel limit of our decoders: Pillow warns
    above MAX_IMAGE_PIXELS (and raises above twice that); the warning becomes an
    error, answered 413 (http_error), before the pixels are decoded."""
    import warnings

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def _select_device(gpu_id) -> None:
    """Make 'cuda' mean this worker's GPU, so model_fn code that says
    torch.device('cuda') lands on TorchServe's gpu_id and not all on cuda:0."""
    import torch

    if gpu_id is not None and torch.cuda.is_available():
        torch.cuda.set_device(int(gpu_id))


def _set_log_level(level: int) -> None:
    for name in ("serve", "handlers"):
        logging.getLogger(name).setLevel(level)


