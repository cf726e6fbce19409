"""Default handler for raw tensors: npy/json/csv in, the model's output tensor out
(application/json by default, application/x-npy, text/csv).

Also the fallback for a user's inference.py that defines only some functions
and a model with no model.json (SageMaker's PyTorch toolkit behaves the same).
"""
from __future__ import annotations

import os

import torch

from handlers import common
from serve import codecs
from serve.user_module import batched


def model_fn(model_dir: str, context=None):
    """TorchScript (model.ts), torch.export (model.pt2), or model.pt + model.json."""
    dev = common.device()
    ts, pt2 = os.path.join(model_dir, "model.ts"), os.path.join(model_dir, "model.pt2")
    if os.path.isfile(ts):
        return torch.jit.load(ts, map_location=dev).eval()
    if os.path.isfile(pt2):
        return torch.export.load(pt2).module().to(dev)
    if os.path.isfile(os.path.join(model_dir, "model.json")):
        return common.load_network(model_dir).to(dev)
    raise FileNotFoundError(
        "no model to load: the model directory has neither code/inference.py with "
        "model_fn, nor model.ts, model.pt2, or model.json + model.pt"
    )


def input_fn(body, content_type: str, context=None) -> torch.Tensor:
    arr = codecs.decode_array(body, content_type)
    t = torch.from_numpy(arr)
    return t.float() if t.dtype == torch.float64 else t


@batched
def predict_fn(inputs: list[torch.Tensor], model, context=None) -> list:
    """Concatenate along dim 0 when the shapes allow it, else one by one."""
    dev = _device_of(model)
    same = len({(t.dtype, tuple(t.shape[1:])) for t in inputs}) == 1 and inputs[0].dim() > 0
    if len(inputs) > 1 and same:
        out = model(torch.cat(inputs).to(dev))
        if isinstance(out, torch.Tensor):
            return [o.cpu() for o in torch.split(out, common.batch_sizes(inputs))]
    return [_to_cpu(model(t.to(dev))) for t in inputs]


def output_fn(prediction, accept: str, context=None):
    return codecs.encode(prediction, accept), codecs.parse_media_type(accept)[0]


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return common.device()


def _to_cpu(out):
    if isinstance(out, torch.Tensor):
        return out.cpu()
    if isinstance(out, (list, tuple)):
        return type(out)(_to_cpu(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_cpu(v) for k, v in out.items()}
    return out
