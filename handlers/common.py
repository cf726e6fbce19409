"""What the default handlers share: model.json of the served model, the device."""
from __future__ import annotations

import functools
import os

import torch

from byoc import artifact
from serve import codecs, config, request_params
from serve.errors import BadRequest


def model_dir_of(context=None) -> str:
    if context is not None:
        return context.system_properties.get("model_dir")
    return os.environ.get("SM_MODEL_DIR", "/opt/ml/model")


@functools.lru_cache(maxsize=4)
def read_spec(model_dir: str) -> dict:
    """model.json of a model the default image handlers serve, which must have one."""
    spec = artifact.read_spec(model_dir)
    if spec is None:
        raise FileNotFoundError(f"no {artifact.SPEC_FILE} in {model_dir}")
    return spec


def spec_for(context=None) -> dict:
    """model.json of the model being served (read once per worker)."""
    return read_spec(model_dir_of(context))


def device() -> torch.device:
    # serve.handler has already made 'cuda' mean this worker's GPU.
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def load_network(model_dir: str) -> torch.nn.Module:
    """Rebuild the network from model.json and load its weights (eval mode)."""
    return artifact.load_model(model_dir, read_spec(model_dir))


def batch_sizes(inputs: list[torch.Tensor]) -> list[int]:
    return [int(t.shape[0]) for t in inputs]


def topk(num_classes: int) -> int:
    """How many classes to list: the request's topk (Accept parameter or
    CustomAttributes), else BYOC_TOPK, else 5; at most num_classes."""
    raw = request_params.current().get("topk")
    if raw is not None:
        if not raw.isdigit() or int(raw) < 1:
            raise BadRequest(f"topk must be a whole number of at least 1, got {raw!r}")
        k = int(raw)
    else:
        k = config.worker_settings().topk
    return min(k, num_classes)


def ranked(probs: torch.Tensor, classes: list, k: int) -> list[list[dict]]:
    """Top-k of each row of an N x C probability tensor as label/index/probability dicts."""
    values, indices = probs.topk(k, dim=1)
    return [
        [{"label": str(classes[i]) if i < len(classes) else str(i), "index": i, "probability": round(float(p), 6)}
         for p, i in zip(vs.tolist(), ix.tolist())]
        for vs, ix in zip(values, indices)
    ]


def predictions(rows: list, accept: str) -> bytes:
    """The top-k answer: {"predictions": ...} (one image's, or a list for several) as JSON,
    or one {"predictions": ...} line per image as JSON lines (Batch Transform)."""
    if accept == codecs.JSONLINES:
        return codecs.encode([{"predictions": row} for row in rows], codecs.JSONLINES)
    return codecs.encode({"predictions": rows[0] if len(rows) == 1 else rows}, codecs.JSON)
