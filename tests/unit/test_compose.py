"""The compose files' GPU profile, as `docker compose config` resolves it (no daemon, no GPU:
that the devices are really handed over needs a GPU machine)."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("DOCKER") or ("/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker")


def compose_config(tmp_path, compose_file, *services, profile=None, env=None):
    if not shutil.which(DOCKER) or subprocess.run([DOCKER, "compose", "version"], capture_output=True).returncode:
        if os.environ.get("CI"):
            pytest.fail("docker compose is needed in CI")
        pytest.skip("docker compose not installed")
    run_env = {k: v for k, v in os.environ.items() if k not in ("TAG", "ALGO_1_GPUS", "ALGO_2_GPUS")}
    run_env.update(ML_DIR=str(tmp_path), JOB_DIR=str(tmp_path), **(env or {}))
    profiles = ["--profile", profile] if profile else []
    out = subprocess.run([DOCKER, "compose", "-f", str(compose_file), *profiles, "config", "--format", "json", *services],
                         capture_output=True, text=True, env=run_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["services"]


def gpu_devices(service):
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_default_services_ask_for_no_gpu_and_use_the_cpu_images(tmp_path):
    services = compose_config(tmp_path, ROOT / "docker-compose.yml")
    assert sorted(services) == ["serve", "train"]     # the gpu profile stays off unless asked for
    assert services["train"]["image"] == "pytorch-byoc-train:cpu"
    assert not gpu_devices(services["train"]) and not gpu_devices(services["serve"])


@pytest.mark.parametrize("tag, want", [(None, "gpu"), ("gpu-7", "gpu-7")])
def test_gpu_profile_reserves_every_gpu_for_train_and_serve(tmp_path, tag, want):
    services = compose_config(tmp_path, ROOT / "docker-compose.yml", profile="gpu",
                              env={"TAG": tag} if tag else None)
    for name in ("train", "serve"):
        gpu = services[f"{name}-gpu"]
        assert gpu_devices(gpu) == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]   # count: all
        assert gpu["image"] == f"pytorch-byoc-{name}:{want}"
        # the rest is the CPU service's: same command, mounts and port
        for key in ("command", "volumes", "ports", "hostname", "shm_size"):
            assert gpu.get(key) == services[name].get(key), key


def test_two_hosts_gpu_profile_gives_each_host_its_own_gpus(tmp_path):
    services = compose_config(tmp_path, ROOT / "docker/compose/two-hosts.yml", "algo-1-gpu", "algo-2-gpu",
                              env={"ALGO_2_GPUS": "2"})
    assert sorted(services) == ["algo-1-gpu", "algo-2-gpu"]
    for host, ids in (("algo-1", ["0"]), ("algo-2", ["2"])):
        gpu = services[f"{host}-gpu"]
        assert gpu_devices(gpu) == [{"driver": "nvidia", "device_ids": ids, "capabilities": ["gpu"]}]
        assert gpu["image"] == "pytorch-byoc-train:gpu"
        assert gpu["hostname"] == host and gpu["networks"] == {"job": {"aliases": [host]}}
        assert gpu["volumes"][0]["source"] == str(tmp_path / host)
    plain = compose_config(tmp_path, ROOT / "docker/compose/two-hosts.yml")
    assert sorted(plain) == ["algo-1", "algo-2"] and not any(gpu_devices(s) for s in plain.values())
