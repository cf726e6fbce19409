"""The serving unit tests' model and batches: a tiny resnet18 spec, a user's inference.py
with only model_fn, and batches answered as the python engine's worker answers them (or
through the torchserve engine's entry, with contexts as TorchServe's worker builds them)."""
from __future__ import annotations

import io

import numpy as np
import torch

CLASSES = ["cat", "dog", "bird"]
SPEC = {
    "format_version": 1,
    "task": "image-classification",
    "arch": "resnet18",
    "library": "torchvision",
    "num_classes": 3,
    "classes": CLASSES,
    "heads": None,
    "input_size": [3, 64, 64],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "weights": "model.pt",
    "versions": {"torch": torch.__version__},
}

# A user's code/inference.py that defines only model_fn (torchvision names only):
# the default handler supplies the rest.
USER_MODEL_FN = '''
import json, os, torch, torchvision

def model_fn(model_dir):
    spec = json.load(open(os.path.join(model_dir, "model.json")))
    net = torchvision.models.get_model(spec["arch"], num_classes=spec["num_classes"])
    net.load_state_dict(torch.load(os.path.join(model_dir, "model.pt"), weights_only=True))
    return net.eval()
'''


def make_context(model_dir, headers: list[dict], gpu=None):
    """ts.context.Context with per-request headers, as the worker fills it."""
    from ts.context import Context, RequestProcessor

    ctx = Context("model", str(model_dir), {}, len(headers) or 1, gpu, "0.12.0")
    ctx.request_processor = [RequestProcessor(h) for h in headers]
    ctx.request_ids = {i: f"req-{i}" for i in range(len(headers))}
    return ctx


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def service_for(model_dir):
    """serve.handler's HandlerService initialised for model_dir, as a worker of the python
    engine does (serve/worker.py)."""
    from serve.handler import HandlerService
    from serve.worker import WorkerContext

    s = HandlerService()
    s.initialize(WorkerContext(str(model_dir), "model", None, 4))
    return s


def _header(headers: dict, name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name), "")


def run_batch(service, model_dir, requests):
    """requests: list of (body, headers) -> list of (status, content_type, body), as the
    python engine's worker answers a batch (then runs what was left for after the reply)."""
    from serve.handler import Request

    service.context.request_headers = [h for _, h in requests]
    batch = [Request(idx=i, body=b, content_type=_header(h, "content-type"), accept=_header(h, "accept"),
                     custom_attributes=_header(h, "x-amzn-sagemaker-custom-attributes"))
             for i, (b, h) in enumerate(requests)]
    service.run(batch)
    results = [(200, r.output_type, r.output) if r.ok else (r.error.status, "application/json", r.error.body())
               for r in batch]
    service.after_reply()
    return results


def run_batch_torchserve(service, model_dir, requests):
    """The same through the torchserve engine's entry, with TorchServe's own Context."""
    from serve.torchserve.entry import handle_batch

    ctx = make_context(model_dir, [h for _, h in requests])
    out = handle_batch(service, [{"body": b} for b, _ in requests], ctx)
    results = []
    for i, body in enumerate(out):
        code, _ = ctx.get_response_status(i)
        results.append((code or 200, ctx.get_response_content_type(i), body))
    return results
