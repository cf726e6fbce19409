"""build.sh: argument handling, tag logic and the ECR calls (against moto)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = str(ROOT / "build.sh")
VERSION = next(
    line.split('"')[1] for line in (ROOT / "pyproject.toml").read_text().splitlines()
    if line.startswith("version = ")
)


def build_sh(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if k not in ("FLAVOR", "BASE_IMAGE", "PIP_CERT")}
    full_env.update(env or {})
    return subprocess.run([BUILD, *args], capture_output=True, text=True, env=full_env, timeout=120)


def git_sha():
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "unknown"


def test_help_lists_every_command():
    out = build_sh("--help")
    assert out.returncode == 0
    for word in ("build", "push", "test", "demo", "lint", "--flavor", "--base", "--tag",
                 "--ca-bundle", "--registry", "--region"):
        assert word in out.stdout


def test_no_arguments_prints_usage_and_fails():
    out = build_sh()
    assert out.returncode == 2 and "Commands:" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["build", "--flavor", "tpu"], "--flavor must be gpu or cpu"),
    (["build", "--flavor"], "--flavor needs a value"),
    (["build", "--base", "--tag", "x"], "--base needs a value"),
    (["build", "--tag", "bad tag!"], "invalid tag"),
    (["build", "--with-apex", "--flavor", "cpu"], "--with-apex needs --flavor gpu"),
    (["build", "--ca-bundle", "/nonexistent/ca.pem"], "is not a readable file"),
    (["build", "trian"], "unknown argument 'trian'"),
])
def test_bad_arguments_fail_with_a_reason(args, message):
    out = build_sh(*args)
    assert out.returncode != 0
    assert message in out.stderr


def test_tags_gpu_and_cpu():
    sha = git_sha()
    gpu = build_sh("tags", "--flavor", "gpu").stdout.split()
    assert gpu == [f"pytorch-byoc-train:{VERSION}", f"pytorch-byoc-train:git-{sha}",
                   "pytorch-byoc-train:latest", f"pytorch-byoc-serve:{VERSION}",
                   f"pytorch-byoc-serve:git-{sha}", "pytorch-byoc-serve:latest"]
    cpu = build_sh("tags", "serve", "--flavor", "cpu").stdout.split()
    assert cpu == [f"pytorch-byoc-serve:{VERSION}-cpu", f"pytorch-byoc-serve:git-{sha}-cpu",
                   "pytorch-byoc-serve:latest-cpu"]


def test_build_dry_run_passes_base_flavor_and_ca_as_secret(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not really a CA")
    out = build_sh("build", "serve", "--flavor", "cpu", "--base", "local/debian:bookworm",
                   "--tag", "t1", "--ca-bundle", str(ca), "--dry-run")
    assert out.returncode == 0, out.stderr
    cmd = out.stdout
    assert "docker/serve.Dockerfile" in cmd and "pytorch-byoc-serve:t1" in cmd
    assert "BASE_IMAGE=local/debian:bookworm" in cmd and "FLAVOR=cpu" in cmd
    assert f"id=ca,src={ca}" in cmd
    # the CA is a secret, never a build argument (build args show in docker history)
    assert "--build-arg CA" not in cmd and "PIP_CERT" not in cmd
    assert "train.Dockerfile" not in cmd


def test_build_defaults_follow_the_flavor():
    out = build_sh("build", "train", "--flavor", "gpu", "--dry-run")
    assert "BASE_IMAGE=nvidia/cuda:" in out.stdout and "pytorch-byoc-train:gpu" in out.stdout
    out = build_sh("build", "train", "--dry-run", env={"FLAVOR": "cpu", "BASE_IMAGE": "my/base:1"})
    assert "BASE_IMAGE=my/base:1" in out.stdout and "pytorch-byoc-train:cpu" in out.stdout


def test_push_to_a_registry_tags_each_image_three_ways():
    out = build_sh("push", "--registry", "localhost:5999", "--flavor", "cpu", "--dry-run")
    assert out.returncode == 0, out.stderr
    pushes = [line.split()[-1] for line in out.stdout.splitlines() if " push " in line]
    sha = git_sha()
    assert pushes == [f"localhost:5999/pytorch-byoc-{name}:{tag}"
                      for name in ("train", "serve")
                      for tag in (f"{VERSION}-cpu", f"git-{sha}-cpu", "latest-cpu")]


def test_push_without_aws_cli_says_so(tmp_path):
    # a PATH with bash and coreutils but no aws
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "sed", "head", "git", "cat", "dirname", "awk", "sha256sum", "cut"):
        path = shutil.which(tool)
        if path:
            (bindir / tool).symlink_to(path)
    out = build_sh("push", "--dry-run", "--flavor", "cpu",
                   env={"PATH": str(bindir), "DOCKER": shutil.which("bash")})
    assert out.returncode != 0
    assert "AWS CLI ('aws') is not installed" in out.stderr


def aws_env(endpoint, **extra):
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    env.update(extra)
    return env


def test_push_to_ecr_creates_repositories_with_scan_on_push_and_logs_in(moto_server):
    env = aws_env(moto_server, AWS_REGION="eu-west-1")
    out = build_sh("push", "--flavor", "gpu", "--dry-run", env=env)
    assert out.returncode == 0, out.stderr
    registry = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"   # moto's default account
    assert f"login --username AWS --password-stdin {registry}" in out.stdout
    assert f"push {registry}/pytorch-byoc-serve:latest" in out.stdout

    import boto3
    ecr = boto3.client("ecr", region_name="eu-west-1", endpoint_url=moto_server,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    repos = {r["repositoryName"]: r for r in ecr.describe_repositories()["repositories"]}
    assert set(repos) == {"pytorch-byoc-train", "pytorch-byoc-serve"}
    assert all(r["imageScanningConfiguration"]["scanOnPush"] for r in repos.values())

    # a second push finds the repositories and does not fail
    again = build_sh("push", "train", "--flavor", "gpu", "--dry-run", env=env)
    assert again.returncode == 0 and "ECR repository pytorch-byoc-train exists" in again.stderr


def test_push_to_ecr_needs_a_region(moto_server):
    out = build_sh("push", "--dry-run", env=aws_env(moto_server))
    assert out.returncode != 0 and "no AWS region" in out.stderr


def test_push_to_ecr_without_credentials_says_so(moto_server):
    env = aws_env(moto_server, AWS_REGION="eu-west-1")
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    out = build_sh("push", "--dry-run", env=env)
    assert out.returncode != 0 and "no AWS credentials" in out.stderr
