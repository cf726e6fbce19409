"""The model's code/requirements.txt: installed at start only when allowed.

Installing packages when an endpoint starts makes start-up slow and depends on
a package index being reachable from the endpoint, so it is off unless
BYOC_INSTALL_REQUIREMENTS=true. A `code/wheelhouse/` folder next to it makes the
install offline (pip --no-index --find-links). Packages go into the server's
work dir, which the workers get first on their PYTHONPATH.
"""
from __future__ import annotations

import os
import subprocess
import sys

from byoc import artifact

ALLOW_VAR = "BYOC_INSTALL_REQUIREMENTS"


class RequirementsError(Exception):
    """The model's requirements cannot be (or may not be) installed."""


def install(model_dir: str, workdir: str, allowed: bool) -> str | None:
    """Install code/requirements.txt; return the folder for PYTHONPATH, or None without one.
    ``allowed``: ServeConfig.install_requirements (BYOC_INSTALL_REQUIREMENTS)."""
    code = artifact.code_dir(model_dir)
    requirements = os.path.join(code, "requirements.txt")
    if not os.path.isfile(requirements):
        return None
    if not allowed:
        raise RequirementsError(
            f"the model has code/requirements.txt and installing packages at start is off: "
            f"set {ALLOW_VAR}=true to allow it (add code/wheelhouse/ to install offline), "
            f"or build an image FROM this one with the packages in it"
        )
    target = os.path.join(workdir, "site-packages")
    command = [sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
               "--target", target, "-r", requirements]
    wheelhouse = os.path.join(code, "wheelhouse")
    if os.path.isdir(wheelhouse):
        command += ["--no-index", "--find-links", wheelhouse]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        reason = [line for line in result.stderr.splitlines() if line.strip()][-3:]
        raise RequirementsError("pip install -r code/requirements.txt failed: " + " | ".join(reason))
    return target
