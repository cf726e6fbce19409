"""Fixtures shared by the unit tests."""
import sys
from pathlib import Path

import pytest


@pytest.fixture
def moto_server(local_server):
    """moto's server mode: the AWS APIs (ECR, STS, S3) on localhost, no account needed."""
    moto = Path(sys.executable).with_name("moto_server")
    aws = Path(sys.executable).with_name("aws")
    if not (moto.exists() and aws.exists()):
        pytest.fail("moto_server and aws must be in the test venv (requirements-dev.txt)")
    address = local_server(lambda port: [str(moto), "-H", "127.0.0.1", "-p", str(port)], "moto_server")
    return f"http://{address}"
