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


README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def readme_snippet():
    """readme_snippet(name) -> the ```python block that follows `<!-- test: name -->` in README.md."""
    def snippet(name):
        text = README.read_text()
        marker = f"<!-- test: {name} -->\n```python\n"
        start = text.index(marker) + len(marker)
        return text[start:text.index("```\n", start)]
    return snippet


@pytest.fixture
def sagemaker_api(monkeypatch, tmp_path):
    """AWS in-process (moto) with fake credentials, no AWS config files, and every API call any
    boto3 client makes recorded as it is sent: sagemaker_api.calls is [(operation, params)].
    The SDKs' IAM role check (v3) is skipped: moto has no policy simulator."""
    import boto3
    import botocore.client
    from moto import mock_aws

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
                        "SAGEMAKER_VALIDATE_ROLE": "false", "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
                        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(tmp_path / "sm-config.yaml"),
                        "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": str(tmp_path / "sm-config.yaml")}.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "sm-config.yaml").write_text(
        "SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")

    class Api:
        def __init__(self):
            self.calls = []

        def sent(self, operation):
            return [params for name, params in self.calls if name == operation]

    api = Api()
    send = botocore.client.BaseClient._make_api_call

    def recording(client, operation_name, api_params):
        api.calls.append((operation_name, api_params))
        return send(client, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="byoc-bucket")
        yield api
