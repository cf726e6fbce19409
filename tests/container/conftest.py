"""Container tests: they run the built images with docker.

Every test here is marked `container` (tests/conftest.py). Images come from
BYOC_TRAIN_IMAGE / BYOC_SERVE_IMAGE (./build.sh test sets them to the flavour it
built). Without a docker daemon these tests skip, except in CI (CI=true), where
a missing docker is a failure: a skipped container test must never pass as green
there (support.docker).
"""
import os
import subprocess

import pytest

from support.docker import built_image, require_docker, train_image  # noqa: F401  (fixtures)

# The serving engines (BYOC_SERVING_ENGINE). A test module marked `both_engines` runs its tests
# once per engine: the serving contract is the same whichever runs the models.
ENGINES = ("python", "torchserve")


def pytest_generate_tests(metafunc):
    if "serve_image" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_engines"):
        metafunc.parametrize("serve_engine", ENGINES, indirect=True, scope="session")


@pytest.fixture(scope="session")
def serve_engine(request):
    return getattr(request, "param", "python")


@pytest.fixture(scope="session")
def serve_image(docker, serve_engine):
    """The serving image; for the torchserve engine, the same image with BYOC_SERVING_ENGINE
    set in it (one layer of metadata), so that every `docker run` of a test gets it."""
    base = built_image("BYOC_SERVE_IMAGE", "pytorch-byoc-serve:cpu")
    if serve_engine == "python":
        return base
    tagged = f"{base}-{serve_engine}"
    dockerfile = f"FROM {base}\nENV BYOC_SERVING_ENGINE={serve_engine}\n"
    subprocess.run([docker, "build", "-q", "-t", tagged, "-"], input=dockerfile, text=True, check=True,
                   capture_output=True)
    return tagged


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
