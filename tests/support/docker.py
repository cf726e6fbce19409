"""The docker client and the built images, for the container and local-mode fixtures.

Without a docker daemon those tests skip, except in CI (CI=true), where a missing docker
is a failure: a skipped container test must never pass as green there.
"""
import os
import shutil
import subprocess

import pytest

DOCKER = os.environ.get("DOCKER") or ("/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker")


def run_docker(*args, check=True):
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=check)


def require_docker(what: str, compose: bool = False) -> str:
    """DOCKER when it answers (and has the compose v2 plugin if ``compose``); else skip,
    or fail in CI. ``what`` names the tests in the message."""
    problem = None
    if not shutil.which(DOCKER):
        problem = f"docker client {DOCKER} not found"
    elif run_docker("info", check=False).returncode != 0:
        problem = "the docker daemon does not answer"
    elif compose and run_docker("compose", "version", check=False).returncode != 0:
        problem = "docker compose (v2 plugin) is missing: SageMaker local mode needs it"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"{what} need docker in CI: {problem}")
        pytest.skip(problem)
    return DOCKER


def built_image(var: str, default: str, optional: bool = False) -> str:
    """The image named by ``var`` (default ``default``); fails when it is not built. An
    ``optional`` one (the GPU flavour's, which ./build.sh test does not build) skips instead,
    except in CI."""
    ref = os.environ.get(var, default)
    if run_docker("image", "inspect", ref, check=False).returncode != 0:
        if optional:
            problem = f"image {ref} is not built: run ./build.sh build all --flavor gpu"
            if not os.environ.get("CI"):
                pytest.skip(problem)
            pytest.fail(problem)
        pytest.fail(f"image {ref} is not built: run ./build.sh build (or ./build.sh test, which builds it)")
    return ref


# Fixtures: a conftest imports them by name; each folder's conftest defines `docker`.
@pytest.fixture(scope="session")
def train_image(docker):
    return built_image("BYOC_TRAIN_IMAGE", "pytorch-byoc-train:cpu")


@pytest.fixture(scope="session")
def serve_image(docker):
    return built_image("BYOC_SERVE_IMAGE", "pytorch-byoc-serve:cpu")
