"""SageMaker local mode fixtures: the SDK's LocalSession against the built images.

Every test here is marked `local_mode` (tests/conftest.py). Without a docker daemon they skip, except in
CI (CI=true), where that is a failure. The SDK drives `docker compose` through the
`docker` found on PATH; the session puts a `docker` link to DOCKER (default
/usr/bin/docker, the BuildKit client) first on PATH so the SDK uses the same client
as the other tests.

AWS: fake credentials and a region in the environment, no shared config files, and
telemetry opted out, so nothing here reaches (or needs) an AWS account.
"""
import json
import os
import shutil
from pathlib import Path

import pytest

from support.docker import DOCKER, require_docker, run_docker, serve_image, train_image  # noqa: F401  (fixtures)

# local mode names its compose network this way, always (sagemaker/local/image.py)
SDK_NETWORK = "sagemaker-local"
COMPOSE_DIR_LABEL = "com.docker.compose.project.working_dir"


@pytest.fixture(scope="session")
def docker():
    return require_docker("local mode tests", compose=True)


def compose_containers(root):
    """Containers of the SDK's compose projects whose files lie under `root`:
    [{"id", "name", "exit_code", "running"}]."""
    ids = run_docker("ps", "-aq", "--filter", f"label={COMPOSE_DIR_LABEL}").stdout.split()
    if not ids:
        return []
    found = []
    for info in json.loads(run_docker("inspect", *ids, check=False).stdout or "[]"):
        workdir = info["Config"]["Labels"].get(COMPOSE_DIR_LABEL, "")
        if workdir == str(root) or workdir.startswith(f"{root}/"):
            found.append({"id": info["Id"], "name": info["Name"].lstrip("/"),
                          "exit_code": info["State"]["ExitCode"], "running": info["State"]["Running"]})
    return found


@pytest.fixture(scope="module")
def sm_env(docker, tmp_path_factory):
    """Fake AWS credentials, a region, no AWS config files, the BuildKit docker first on PATH.
    Module scope: the tests of other folders that run after these never see it."""
    home = tmp_path_factory.mktemp("lm-home")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        mp.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")  # v2 is what users run (module docstring)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(home / "aws-config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials"))
        # the user's own SDK defaults (~/.config/sagemaker/config.yaml) must not leak in;
        # telemetry off: there is no AWS endpoint to send it to
        (home / "config.yaml").write_text(
            "SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")
        mp.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(home / "config.yaml"))
        mp.setenv("SAGEMAKER_ADMIN_CONFIG_OVERRIDE", str(home / "config.yaml"))
        # the SDK runs a bare `docker`: make that name mean DOCKER
        bin_dir = home / "bin"
        bin_dir.mkdir()
        (bin_dir / "docker").symlink_to(shutil.which(DOCKER))
        mp.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        yield


@pytest.fixture(scope="session")
def container_root(tmp_path_factory):
    """Where the SDK writes its compose projects (`local.container_root`)."""
    return tmp_path_factory.mktemp("lm-containers")


@pytest.fixture(scope="session")
def _sdk_network_cleanup(docker):
    """Local mode creates the `sagemaker-local` network and never removes it: remove
    it at the end if this session created it and nothing else uses it."""
    existed = run_docker("network", "inspect", SDK_NETWORK, check=False).returncode == 0
    yield
    if not existed:
        run_docker("network", "rm", SDK_NETWORK, check=False)


@pytest.fixture
def sdk_containers(container_root):
    """sdk_containers() -> this session's local-mode containers (see compose_containers)."""
    return lambda: compose_containers(container_root)


@pytest.fixture(autouse=True)
def compose_cleanup(docker, container_root, _sdk_network_cleanup):
    """Local training leaves its stopped containers behind (the SDK runs `compose up`,
    never `down`): remove this session's after each test."""
    yield
    leftover = compose_containers(container_root)
    if leftover:
        run_docker("rm", "-f", *[c["id"] for c in leftover], check=False)


@pytest.fixture(scope="module")
def make_session(sm_env, container_root):
    """make_session(**local_config) -> a sagemaker LocalSession with local code, the
    compose projects under container_root and telemetry opted out."""
    import boto3
    from sagemaker.local import LocalSession

    def make(**local):
        session = LocalSession(
            boto_session=boto3.Session(region_name="us-east-1"),
        )
        session.config = {"local": {"local_code": True, "container_root": str(container_root), **local}}
        return session

    return make


@pytest.fixture(scope="session")
def role():
    # a full ARN: the SDK then never asks IAM to expand it
    return "arn:aws:iam::111111111111:role/SageMakerRole"


@pytest.fixture(scope="session")
def repo_root():
    return Path(__file__).resolve().parents[2]
