"""A TorchServe model store that serves /opt/ml/model in place.

TorchServe 0.12 loads a model store *directory* as an unpacked ("no-archive")
model when it holds MAR-INF/MANIFEST.json. We create that directory in the work
dir and link every entry of the model directory into it, so weights are never
copied (SageMaker's model dir may be read-only, and models can be large).
Copying is the fallback only where links cannot be made.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil

from byoc import artifact
from serve.config import MODEL_NAME, MODEL_VERSION

logger = logging.getLogger(__name__)

HANDLER = "serve.torchserve.entry:handle"


def manifest() -> dict:
    return {
        "createdOn": datetime.datetime.now().strftime("%d/%m/%Y %H:%M:%S"),
        "runtime": "python",
        "model": {"modelName": MODEL_NAME, "modelVersion": MODEL_VERSION, "handler": HANDLER},
        "archiverVersion": "0.12.0",
    }


def build(model_dir: str, store: str) -> str:
    """Create <store>/model linking to the files of ``model_dir``; return its path."""
    src = artifact.model_root(model_dir)
    dst = os.path.join(store, MODEL_NAME)
    if os.path.lexists(dst):
        shutil.rmtree(dst)
    os.makedirs(os.path.join(dst, "MAR-INF"))
    with open(os.path.join(dst, "MAR-INF", "MANIFEST.json"), "w") as f:
        json.dump(manifest(), f, indent=2)
    for name in os.listdir(src):
        if name == "MAR-INF":
            continue  # ours describes the handler; a stale one would not
        _link_or_copy(os.path.join(src, name), os.path.join(dst, name))
    return dst


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.symlink(os.path.abspath(src), dst)
    except OSError as exc:
        logger.warning("cannot link %s (%s): copying it", src, exc)
        if os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
