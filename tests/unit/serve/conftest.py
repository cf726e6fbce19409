"""Fixtures for the serving tests: a tiny real model directory, real photos,
a TorchServe Context as the worker builds it."""
from __future__ import annotations

import glob
import importlib
import importlib.util
import io
import json
import os
import sys
import types

import pytest
import torch
import torchvision

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

# Used when train/classify/models.py (written in parallel) is not there yet:
# the same contract, for torchvision names only.
FALLBACK_MODEL_FN = '''
import json, os, torch, torchvision

def model_fn(model_dir):
    spec = json.load(open(os.path.join(model_dir, "model.json")))
    net = torchvision.models.get_model(spec["arch"], num_classes=spec["num_classes"])
    net.load_state_dict(torch.load(os.path.join(model_dir, "model.pt"), weights_only=True))
    return net.eval()
'''


def has_build_model() -> bool:
    try:
        return importlib.util.find_spec("train.classify.models") is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """model.pt + model.json of a real (untrained) resnet18 with 3 classes."""
    d = tmp_path_factory.mktemp("model-files")
    torch.manual_seed(0)
    net = torchvision.models.get_model("resnet18", num_classes=3)
    torch.save(net.state_dict(), d / "model.pt")
    (d / "model.json").write_text(json.dumps(SPEC))
    return d


@pytest.fixture
def model_dir(model_files, tmp_path):
    """A fresh /opt/ml/model layout per test (weights linked, not copied)."""
    d = tmp_path / "model"
    d.mkdir()
    os.symlink(model_files / "model.pt", d / "model.pt")
    (d / "model.json").write_text((model_files / "model.json").read_text())
    return d


@pytest.fixture
def build_model_stub(monkeypatch):
    """train.classify.models.build_model, or a torchvision stand-in if absent."""
    if has_build_model():
        return
    mod = types.ModuleType("train.classify.models")
    mod.build_model = lambda spec: torchvision.models.get_model(spec["arch"], num_classes=spec["num_classes"])
    pkg = types.ModuleType("train.classify")
    pkg.models = mod
    monkeypatch.setitem(sys.modules, "train.classify", pkg)
    monkeypatch.setitem(sys.modules, "train.classify.models", mod)


def _pkg_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    return os.path.dirname(spec.origin) if spec and spec.origin else None


@pytest.fixture(scope="session")
def jpeg_bytes() -> bytes:
    """A real photo as JPEG (foolbox's ImageNet samples, else Pillow-made)."""
    root = _pkg_dir("foolbox")
    files = sorted(glob.glob(os.path.join(root, "data", "imagenet_*.jpg"))) if root else []
    if files:
        return open(files[0], "rb").read()
    mpl = _pkg_dir("matplotlib")
    if mpl and os.path.exists(os.path.join(mpl, "mpl-data/sample_data/grace_hopper.jpg")):
        return open(os.path.join(mpl, "mpl-data/sample_data/grace_hopper.jpg"), "rb").read()
    pytest.skip("no real JPEG available: pip install --no-deps foolbox==3.3.4")


@pytest.fixture(scope="session")
def png_bytes(jpeg_bytes) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg_bytes)).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def make_context(model_dir, headers: list[dict], gpu=None):
    """ts.context.Context with per-request headers, as the worker fills it."""
    from ts.context import Context, RequestProcessor

    ctx = Context("model", str(model_dir), {}, len(headers) or 1, gpu, "0.12.0")
    ctx.request_processor = [RequestProcessor(h) for h in headers]
    ctx.request_ids = {i: f"req-{i}" for i in range(len(headers))}
    return ctx
