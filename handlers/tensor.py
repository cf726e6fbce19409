"""Default handler for raw tensors: npy/json/csv in, the model's output out
(application/json by default, application/x-npy, text/csv).

Also what fills in for a user's code/inference.py that defines only some functions, and for a
model with no model.json. Its model_fn loads what SageMaker's PyTorch serving toolkit loads,
so a model.tar.gz made for the AWS Deep Learning Container works unchanged: a TorchScript
``model.pt``, else the one ``*.pt`` / ``*.pth`` file, with ``torch.jit.load``; and
``model.ts`` (TorchScript), ``model.pt2`` (torch.export) and our model.json + weights. Its
predict_fn, like the toolkit's, runs the model in eval mode on the worker's device, one
request per call: concurrent calls are merged into one batch only where serve/optimize.py has
proven that this gives every request its own answer.
"""
from __future__ import annotations

import logging
import os
import warnings
import zipfile

import torch

from byoc import artifact
from handlers import common
from serve import codecs, config

logger = logging.getLogger(__name__)


def model_fn(model_dir: str, context=None):
    """model.ts, model.pt2, model.json + its weights, a TorchScript model.pt, or the one *.pt / *.pth."""
    dev = common.device()
    path = artifact.default_model_file(model_dir)
    if path is not None and path.endswith(artifact.TORCHSCRIPT_FILE):
        return _load_torchscript(path, dev)
    if path is not None and path.endswith(artifact.EXPORTED_FILE):
        return torch.export.load(path).module().to(dev)
    if os.path.isfile(artifact.spec_path(model_dir)):
        return common.load_network(model_dir).to(dev)
    if path is None:
        raise FileNotFoundError(artifact.no_model_message(model_dir, config.worker_settings().program))
    return _load_torchscript(path, dev)


def _load_torchscript(path: str, dev: torch.device):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # explained below, once
            model = torch.jit.load(path, map_location=dev).eval()
        logger.info("%s is TorchScript, which torch deprecates (torch.jit.load warns): it loads and runs; "
                    "torch.export (model.pt2) is what replaces it", os.path.basename(path))
        return model
    except RuntimeError:
        raise ValueError(f"{os.path.basename(path)} is {_what_is(path)}, not a TorchScript model, and "
                         f"there is no model.json to rebuild the network from: {_fix_for(path)}") from None


def _what_is(path: str) -> str:
    """What a .pt file that is not TorchScript holds, as far as a safe load tells."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return "a pickled object that only weights_only=False would load (it runs code from the file)" \
            if zipfile.is_zipfile(path) else "not a file torch can read"
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return f"a state_dict ({len(obj)} tensors, e.g. {next(iter(obj))!r})"
    return f"a {type(obj).__name__} saved with torch.save"


def _fix_for(path: str) -> str:
    program = config.worker_settings().program
    return (f"add code/{program} (SAGEMAKER_PROGRAM) with a model_fn that builds the network and loads "
            f"{os.path.basename(path)}, or save the model with torch.jit.save or torch.export")


def input_fn(body, content_type: str, context=None) -> torch.Tensor:
    """npy keeps its dtype; JSON, JSON lines and CSV numbers become float32, as the toolkit's FloatTensor."""
    arr = codecs.decode_array(body, content_type)
    t = torch.from_numpy(arr)
    if content_type in (codecs.JSON, codecs.CSV, codecs.JSONLINES) or t.dtype == torch.float64:
        return t.float()
    return t


def predict_fn(data: torch.Tensor, model, context=None):
    """The model in eval mode on its device, as the toolkit's default predict_fn (which
    calls model.eval() too: a model_fn may return a model in training mode)."""
    if getattr(model, "training", False):
        model.eval()
    return _to_cpu(model(data.to(_device_of(model))))


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
