"""Container tests: they run the built images with docker.

Every test here is marked `container` (tests/conftest.py). Images come from
BYOC_TRAIN_IMAGE / BYOC_SERVE_IMAGE (./build.sh test sets them to the flavour it
built). Without a docker daemon these tests skip, except in CI (CI=true), where
a missing docker is a failure: a skipped container test must never pass as green
there (support.docker).
"""
import os

import pytest

from support.docker import built_image, require_docker, serve_image, train_image  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def docker():
    return require_docker("container tests")


# The GPU flavour's images (test_gpu_image.py): ./build.sh test builds one flavour, .ci/run both.
@pytest.fixture(scope="session")
def gpu_train_image(docker):
    return built_image("BYOC_GPU_TRAIN_IMAGE", "pytorch-byoc-train:gpu", optional=True)


@pytest.fixture(scope="session")
def gpu_serve_image(docker):
    return built_image("BYOC_GPU_SERVE_IMAGE", "pytorch-byoc-serve:gpu", optional=True)


@pytest.fixture(scope="session")
def flavor():
    return os.environ.get("BYOC_FLAVOR", "cpu")
