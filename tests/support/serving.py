"""The serving unit tests' model and TorchServe requests: a tiny resnet18 spec, a
user's inference.py with only model_fn, and contexts as the TorchServe worker builds them."""
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
    """serve.handler's HandlerService initialised for model_dir, as a TorchServe worker does."""
    from serve.handler import HandlerService

    s = HandlerService()
    s.initialize(make_context(model_dir, [{}]))
    return s


def run_batch(service, model_dir, requests):
    """requests: list of (body, headers) -> list of (status, content_type, body)."""
    ctx = make_context(model_dir, [h for _, h in requests])
    out = service.handle([{"body": b} for b, _ in requests], ctx)
    results = []
    for i, body in enumerate(out):
        code, _ = ctx.get_response_status(i)
        results.append((code or 200, ctx.get_response_content_type(i), body))
    return results
