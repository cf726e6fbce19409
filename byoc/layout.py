"""The /opt/ml layout: where a SageMaker container finds its inputs and leaves its outputs.

One rule for the root, for every part of both images: ``$BYOC_ML_ROOT`` when it is set and
not empty (tests, and runs outside a container), else ``/opt/ml``. Everything else hangs
below it as SageMaker lays it out::

    <root>/input/config/   hyperparameters.json, resourceconfig.json, inputdataconfig.json
    <root>/input/data/<channel>/
    <root>/code/           the unpacked source directory
    <root>/model/          what serving loads (model.tar.gz is made from it)
    <root>/output/         success or failure, and data/ (output.tar.gz)
    <root>/checkpoints/    the SDK's default checkpoint_local_path

``environ`` is a mapping of environment variables; None means this process's own
(``os.environ``, read when called, never at import).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

DEFAULT_ROOT = "/opt/ml"


def ml_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$BYOC_ML_ROOT`` if set and not empty, else ``/opt/ml``."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("BYOC_ML_ROOT") or DEFAULT_ROOT)


def checkpoint_dir(environ: Mapping[str, str] | None = None, root: Path | None = None) -> Path:
    """``$SM_CHECKPOINT_DIR`` if set and not empty, else ``<root>/checkpoints`` (``root``:
    ``ml_root(environ)`` unless the caller already holds it).

    SageMaker exports no variable for this path: the SDK's ``checkpoint_local_path``
    defaults to /opt/ml/checkpoints, and the ``train`` entry exports SM_CHECKPOINT_DIR
    to every program it runs (see byoc.checkpoint's module doc).
    """
    environ = os.environ if environ is None else environ
    return Path(environ.get("SM_CHECKPOINT_DIR") or (root or ml_root(environ)) / "checkpoints")
