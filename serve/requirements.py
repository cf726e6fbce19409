"""The model's code/requirements.txt: installed at start, as SageMaker's PyTorch toolkit does.

On by default (BYOC_INSTALL_REQUIREMENTS=false turns it off, for an image that already holds
the packages or an endpoint with no route to a package index). A `code/wheelhouse/` folder next
to it makes the install offline (pip --no-index --find-links). Packages go into a folder of the
server's work dir, which the workers get first on their PYTHONPATH (the server runs as an
unprivileged user: the image's own site-packages stay read-only). A failed install stops the
container with pip's reason.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

from byoc import artifact

logger = logging.getLogger(__name__)

ALLOW_VAR = "BYOC_INSTALL_REQUIREMENTS"


class RequirementsError(Exception):
    """The model's requirements cannot be installed."""


def install(model_dir: str, target: str, allowed: bool) -> str | None:
    """Install <model_dir>/code/requirements.txt into ``target``, emptied first; return ``target`` for
    PYTHONPATH, or None when there is nothing to install (or installing is off).
    ``allowed``: ServeConfig.install_requirements (BYOC_INSTALL_REQUIREMENTS)."""
    # pip --target keeps a package already there: what an earlier model of this name installed
    # would win over this one's requirements
    shutil.rmtree(target, ignore_errors=True)
    code = artifact.code_dir(model_dir)
    requirements = os.path.join(code, "requirements.txt")
    if not os.path.isfile(requirements):
        return None
    if not allowed:
        logger.info("code/requirements.txt not installed: %s=false", ALLOW_VAR)
        return None
    command = [sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
               "--no-warn-script-location", "--target", target, "-r", requirements]
    wheelhouse = os.path.join(code, "wheelhouse")
    if os.path.isdir(wheelhouse):
        command += ["--no-index", "--find-links", wheelhouse]
    logger.info("installing code/requirements.txt%s", " from code/wheelhouse" if os.path.isdir(wheelhouse) else "")
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        reason = [line.strip() for line in result.stderr.splitlines() if line.strip()][-3:]
        raise RequirementsError(
            "pip install -r code/requirements.txt failed: " + " | ".join(reason or ["(no message)"])
            + f" (add code/wheelhouse/ to install offline, or set {ALLOW_VAR}=false when the image has them)")
    return target
