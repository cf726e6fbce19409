"""Fixtures shared by the unit tests."""
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def moto_server():
    moto = Path(sys.executable).with_name("moto_server")
    aws = Path(sys.executable).with_name("aws")
    if not (moto.exists() and aws.exists()):
        pytest.fail("moto_server and aws must be in the test venv (requirements-dev.txt)")
    port = free_port()
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto_server did not start")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


