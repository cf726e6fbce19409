"""Default handler for single-head image classifiers (model.json task
"image-classification", heads null).

In:  image/jpeg, image/png, application/x-image (one image), or
     application/x-npy, application/json (an array: HxW, CxH xW, HxWxC, or a
     batch NxCxHxW / NxHxWxC; whole-number pixels 0-255 or floats already in [0, 1]), or
     application/jsonlines (one image array per line: a batch, in order).
Out: application/json top-k (per request `Accept: application/json; topk=3` or
     CustomAttributes `topk=3`, else BYOC_TOPK, default 5):
     {"predictions": [{"label": "cat", "index": 3, "probability": 0.91}, ...]}
     (a list of such lists for an array holding several images);
     application/jsonlines: {"predictions": [...]} per image, one line each;
     application/x-npy or text/csv: the probabilities, N x num_classes.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from byoc import artifact
from handlers import common, gpu_batch
from serve import codecs, config
from serve.errors import BadRequest
from serve.user_module import batched


def model_fn(model_dir: str, context=None) -> torch.nn.Module:
    dev = common.device()
    model = common.load_network(model_dir).to(dev)
    model._byoc_spec = common.read_spec(model_dir)  # normalisation for predict_fn
    model._byoc_amp = gpu_batch.amp_dtype(dev)  # issue 10: autocast on GPU workers
    return model.to(memory_format=torch.channels_last)


def input_fn(body, content_type: str, context=None) -> torch.Tensor:
    """One request -> float tensor N x C x H x W in [0, 1] at the model's size."""
    transform = artifact.EvalTransform.from_spec(common.spec_for(context))
    if content_type in codecs.IMAGE_TYPES:
        return _from_image(body, content_type, transform)
    if content_type in (codecs.NPY, codecs.JSON, codecs.JSONLINES):
        channels, (height, width) = transform.channels, transform.crop_size
        return _from_array(codecs.decode_array(body, content_type), channels, height, width)
    codecs.require_type(content_type, codecs.IMAGE_TYPES + (codecs.NPY, codecs.JSON, codecs.JSONLINES))


def deferred_input_fn(body, content_type: str, context=None):
    """input_fn when this module's predict_fn runs too (serve.user_module): on a GPU worker a
    JPEG is only checked from its header here, and predict_fn decodes the batch's JPEGs
    together on the GPU (handlers/gpu_batch.py). Everything else: input_fn."""
    if content_type in codecs.IMAGE_TYPES and gpu_batch.decode_on(common.device()):
        jpeg = gpu_batch.defer(body, content_type, common.spec_for(context)["input_size"][0])
        if jpeg is not None:
            return jpeg
    return input_fn(body, content_type, context)


@batched
def predict_fn(inputs: list[torch.Tensor], model, context=None) -> list[torch.Tensor]:
    """All requests of a batch in one forward pass; probabilities per request."""
    probs = torch.softmax(forward(inputs, model, context), dim=1).cpu()
    return list(torch.split(probs, common.batch_sizes(inputs)))


def forward(inputs: list[torch.Tensor], model, context=None) -> torch.Tensor:
    """The batch's inputs normalised and through the network: float32 logits."""
    dev = next(model.parameters()).device
    if gpu_batch.deferred(inputs):
        x = gpu_batch.assemble(inputs, dev, getattr(model, "_byoc_spec", None) or common.spec_for(context))
    else:
        x = torch.cat(inputs).to(dev, non_blocking=True)
    x = _normalize(x, _stats(model, x, context)).contiguous(memory_format=torch.channels_last)
    with gpu_batch.autocast(model, dev):
        return model(x).float()


def output_fn(prediction: torch.Tensor, accept: str, context=None):
    if accept not in (codecs.JSON, codecs.JSONLINES):
        return codecs.encode(prediction.numpy(), accept), accept
    rows = common.ranked(prediction, _classes(context), common.topk(prediction.shape[1]))
    return common.predictions(rows, accept), accept


# ---------------------------------------------------------------- helpers
def _from_image(body, content_type, transform: artifact.EvalTransform) -> torch.Tensor:
    """Decode, then the trainer's evaluation transform (byoc.artifact.EvalTransform)."""
    height, width = transform.crop_size
    img = codecs.decode_image(body, content_type, draft=(width, height))
    if transform.channels == 1:
        img = img.convert("L")
    elif transform.channels != 3:
        raise BadRequest(f"the model takes {transform.channels}-channel arrays, not images")
    arr = np.asarray(transform.pil(img), dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy()).unsqueeze(0).float().div_(255)


def _from_array(arr: np.ndarray, channels, height, width) -> torch.Tensor:
    if arr.dtype.kind not in "uif":
        raise BadRequest(f"image arrays hold uint8 pixels or floats in [0, 1], not {arr.dtype}")
    if arr.ndim == 2 and channels == 1:
        arr = arr[None]
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise BadRequest(f"array must be an image or a batch of images, got shape {list(arr.shape)}")
    if arr.shape[1] != channels and arr.shape[3] == channels:
        arr = arr.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if arr.shape[1] != channels:
        raise BadRequest(f"array has no axis of {channels} channels: shape {list(arr.shape)}")
    limit = config.worker_settings().max_instances
    if arr.shape[0] > limit:
        raise BadRequest(f"at most {limit} images per request (BYOC_MAX_INSTANCES)")
    if arr.dtype.kind in "ui" and arr.size and (arr.min() < 0 or arr.max() > 255):
        raise BadRequest("integer image arrays hold pixels from 0 to 255")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    # whole numbers are pixels (npy uint8, or JSON's integers); floats are already in [0, 1]
    t = t.float().div_(255) if arr.dtype.kind in "ui" else t.float()
    if tuple(t.shape[2:]) != (height, width):
        t = F.interpolate(t, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return t


def _stats(model, x, context) -> tuple[torch.Tensor, torch.Tensor]:
    """mean/std from model.json, cached on the model as tensors on its device."""
    cached = getattr(model, "_byoc_norm", None)
    if cached is None or cached[0].device != x.device:
        spec = getattr(model, "_byoc_spec", None) or common.spec_for(context)
        cached = artifact.EvalTransform.from_spec(spec).stats(x.device, channels=x.shape[1])
        model._byoc_norm = cached
    return cached


def _normalize(x, stats):
    mean, std = stats
    return (x - mean) / std


def _classes(context):
    try:
        return common.spec_for(context).get("classes") or []
    except OSError:
        return []
