"""Container tests: they run the built images with docker.

Images come from BYOC_TRAIN_IMAGE / BYOC_SERVE_IMAGE (./build.sh test sets
them to the flavour it built). Without a docker daemon these tests skip, except
in CI (CI=true), where a missing docker is a failure: a skipped container test
must never pass as green there.
"""
import os
import shutil
import subprocess

import pytest

DOCKER = os.environ.get("DOCKER") or ("/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/container/" in str(item.fspath):
            item.add_marker(pytest.mark.container)


def _docker_ok():
    if not shutil.which(DOCKER):
        return f"docker client {DOCKER} not found"
    info = subprocess.run([DOCKER, "info"], capture_output=True, text=True)
    return None if info.returncode == 0 else "the docker daemon does not answer"


@pytest.fixture(scope="session")
def docker():
    problem = _docker_ok()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"container tests need docker in CI: {problem}")
        pytest.skip(problem)
    return DOCKER


def _image(docker, var, default):
    ref = os.environ.get(var, default)
    found = subprocess.run([docker, "image", "inspect", ref], capture_output=True)
    if found.returncode != 0:
        pytest.fail(f"image {ref} is not built: run ./build.sh build (or ./build.sh test, which builds it)")
    return ref


@pytest.fixture(scope="session")
def train_image(docker):
    return _image(docker, "BYOC_TRAIN_IMAGE", "pytorch-byoc-train:cpu")


@pytest.fixture(scope="session")
def serve_image(docker):
    return _image(docker, "BYOC_SERVE_IMAGE", "pytorch-byoc-serve:cpu")


@pytest.fixture(scope="session")
def flavor():
    return os.environ.get("BYOC_FLAVOR", "cpu")
