"""Fixtures for the serving tests: a tiny real model directory, real photos
(their spec and the TorchServe contexts: support.serving)."""
from __future__ import annotations

import glob
import importlib.util
import io
import json
import os

import pytest
import torch
import torchvision

from support.serving import SPEC


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


@pytest.fixture(autouse=True)
def fresh_worker_settings():
    """serve.config.worker_settings() is read once per worker: each test reads
    it anew, after its own monkeypatched environment."""
    import warnings

    from PIL import Image

    from serve import config

    config.worker_settings.cache_clear()
    pixels = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():  # a worker turns PIL's bomb warning into an error
        yield
    Image.MAX_IMAGE_PIXELS = pixels
    config.worker_settings.cache_clear()
