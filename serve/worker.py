"""A worker of the python engine: one process, one model, loaded once, answering the batches
the front door (serve/pool.py) sends over its socket.

    python -m serve.worker --fd N --model-dir DIR --model-name NAME [--gpu-id G] [--index I]

It reports ``ready`` once model_fn has returned (or ``failed`` with the reason, and exits 1),
then answers each ``batch`` with one answer per request, in order: serve/handler.py runs the
SageMaker functions and gives each request its own output or error. After the answers have
gone it runs what the optimisation left for later (serve/optimize.py), and only then says
``idle``: the front door sends it nothing meanwhile, so a batch's timeout never counts
another's proofs. It exits when the front door closes the socket. Settings come from the environment `serve` gave it
(serve/config.py, WorkerSettings).
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
import time

from serve import config, wire

logger = logging.getLogger("serve.worker")

INLINE_MAX = 8 * 1024 * 1024   # answers larger than this go back as a file (serve/pool.py spools too)


class WorkerContext:
    """What user code may ask of ``context`` (the part of TorchServe's Context that
    SageMaker's handlers and users' scripts use): system_properties with model_dir and
    gpu_id, the model's name, and each request's headers in the batch being handled."""

    def __init__(self, model_dir: str, model_name: str, gpu_id: int | None, batch_size: int):
        self.system_properties = {"model_dir": model_dir, "gpu_id": gpu_id, "batch_size": batch_size,
                                  "server_name": "pytorch-byoc", "server_version": "python"}
        self.model_name = model_name
        self.manifest = {"model": {"modelName": model_name}}
        self.request_headers: list[dict] = []

    def get_all_request_header(self, idx: int) -> dict:
        return self.request_headers[idx] if idx < len(self.request_headers) else {}

    def get_request_header(self, idx: int, key: str):
        key = key.lower()
        return next((v for k, v in self.get_all_request_header(idx).items() if k.lower() == key), None)


def serve_batches(sock: socket.socket, service, context: WorkerContext, spool: str,
                  prefix: str = "answer-") -> None:
    from serve.handler import Request

    while True:
        message = wire.recv(sock)
        if message is None:   # the front door closed: we are done
            return
        header, bodies = message
        if header.get("op") == "drain":
            service.drain()
            continue
        requests, inline = [], iter(bodies)
        for idx, meta in enumerate(header["requests"]):
            body = _read_spooled(meta["path"]) if meta.get("path") else next(inline)
            requests.append(Request(idx=idx, body=body, content_type=meta.get("content_type", ""),
                                    accept=meta.get("accept", ""),
                                    custom_attributes=meta.get("custom_attributes", "")))
        context.request_headers = [meta.get("headers", {}) for meta in header["requests"]]
        service.run(requests, header.get("threads", 0))
        answers, parts = [], []
        for r in requests:
            status, ctype, body = (200, r.output_type, r.output) if r.ok else \
                (r.error.status, "application/json", r.error.body())
            answer = {"status": status, "content_type": ctype}
            if len(body) > INLINE_MAX:
                answer["path"] = _spool(spool, body, prefix)
            else:
                parts.append(body)
            answers.append(answer)
        wire.send(sock, {"op": "answers", "id": header["id"], "answers": answers}, parts)
        service.after_reply()   # the client has its answer: the proofs run on the worker's time, not its
        wire.send(sock, {"op": "idle", "id": header["id"]})


def _read_spooled(path: str) -> bytes:
    with open(path, "rb") as f:
        body = f.read()
        # its pages in the page cache count against the container's memory: drop them
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return body


def _spool(folder: str, body: bytes, prefix: str = "answer-") -> str:
    fd, path = tempfile.mkstemp(dir=folder, prefix=prefix)
    with os.fdopen(fd, "wb") as f:
        f.write(body)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="the socket to the front door")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--gpu-id", type=int, default=None)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--spool", default=tempfile.gettempdir(), help="folder for answers too large to send")
    parser.add_argument("--answer-prefix", default="answer-",
                        help="their files' names: the front door deletes this process's after it dies")
    args = parser.parse_args(argv)
    settings = config.worker_settings()
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format=f"%(asctime)s [%(levelname)s] worker {args.index} ({args.model_name}) "
                               "%(name)s - %(message)s")
    sock = socket.socket(fileno=args.fd)
    try:
        return _work(sock, args)
    except (BrokenPipeError, ConnectionResetError):   # the front door has gone: so do we
        return 0


def _work(sock: socket.socket, args) -> int:
    from serve.handler import HandlerService

    service = HandlerService()
    context = WorkerContext(args.model_dir, args.model_name, args.gpu_id, args.batch_size)
    start = time.monotonic()
    try:
        service.initialize(context)
    except Exception as exc:   # the reason goes to the front door, the traceback to the log
        logger.error("the model failed to load", exc_info=True)
        wire.send(sock, {"op": "failed", "error": type(exc).__name__, "message": " ".join(str(exc).split())[:4000]})
        return 1
    wire.send(sock, {"op": "ready", "pid": os.getpid(), "load_s": round(time.monotonic() - start, 3)})
    serve_batches(sock, service, context, args.spool, args.answer_prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
