"""Fixtures for every test folder."""
import socket
import subprocess
import time

import pytest


# Every test in these folders gets the folder's marker (pyproject.toml lists them).
FOLDER_MARKERS = {"tests/container/": "container", "tests/local_mode/": "local_mode"}


def pytest_collection_modifyitems(items):
    for item in items:
        for folder, marker in FOLDER_MARKERS.items():
            # *_sdk3.py files carry local_mode_v3 (SageMaker SDK v3) instead of local_mode
            if folder in str(item.fspath) and not (marker == "local_mode" and item.fspath.basename.endswith("_sdk3.py")):
                item.add_marker(getattr(pytest.mark, marker))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """A function giving a free TCP port on 127.0.0.1."""
    return _free_port


@pytest.fixture
def local_server():
    """start(argv_for_port, what) runs a server on a free 127.0.0.1 port, waits until it
    accepts connections and returns "127.0.0.1:PORT"; it is stopped after the test."""
    started = []

    def start(argv_for_port, what, timeout=30):
        port = _free_port()
        proc = subprocess.Popen(argv_for_port(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return f"127.0.0.1:{port}"
            except OSError:
                time.sleep(0.1)  # startup only
        pytest.fail(f"{what} did not start on port {port}")

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


# Test files named *_sdk3.py need the SageMaker Python SDK v3, which cannot share a venv with
# v2 (requirements-sdk3.txt): ./build.sh test runs them with .venv-sdk3. In a venv with v2
# they are not collected, and the header says so.
def _sagemaker_major():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("sagemaker").split(".")[0])
    except PackageNotFoundError:
        return None


def pytest_ignore_collect(collection_path, config):
    if collection_path.name.endswith("_sdk3.py") and _sagemaker_major() != 3:
        return True
    return None


def pytest_report_header(config):
    major = _sagemaker_major()
    if major != 3:
        return [f"sagemaker SDK {major or 'absent'}: tests/*/*_sdk3.py not collected "
                "(SDK v3; ./build.sh test runs them with .venv-sdk3)"]
    return ["sagemaker SDK 3: tests/*/*_sdk3.py run here"]
