"""Two hosts (algo-1, algo-2) as SageMaker runs them: one container each on one network, each
with its own /opt/ml and resourceconfig.json, started with docker compose from
docker/compose/two-hosts.yml, the file users run."""
import json
import os
import shutil
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker/compose/two-hosts.yml"

HOROVOD_SCRIPT = """
import os, socket, torch, horovod.torch as hvd
hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum)
print(f"rank {hvd.rank()} of {hvd.size()} on {socket.gethostname()} sum {int(total.item())}", flush=True)
if hvd.rank() == 0:
    open(os.path.join(os.environ["SM_MODEL_DIR"], "result.txt"), "w").write(str(int(total.item())))
"""


DDP_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ddp_sum.py"


# No distribution: each host does its own part (a shard, a fold), algo-2 takes longer.
PER_HOST_SCRIPT = """
import json, os, time
host = os.environ["SM_CURRENT_HOST"]
time.sleep(8 if host == "algo-2" else 0)
open(os.path.join(os.environ["SM_MODEL_DIR"], f"part-{host}.json"), "w").write(json.dumps({"host": host}))
print(f"{host}: my part is done", flush=True)
"""


def job_tree(root, host, hyperparameters, resources=None, plain_strings=False):
    """An /opt/ml tree; hyperparameters JSON-encoded as SDK v2 writes them, or (plain_strings)
    as SDK v3 does: str values as they are."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (root / "code").mkdir()
    (root / "code" / "hvd.py").write_text(textwrap.dedent(HOROVOD_SCRIPT))
    shutil.copy(DDP_SCRIPT, root / "code" / "ddp.py")
    (root / "code" / "part.py").write_text(textwrap.dedent(PER_HOST_SCRIPT))
    resources = resources or {"hosts": ["algo-1", "algo-2"], "network_interface_name": "eth0"}
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": host, **resources}))
    (config / "hyperparameters.json").write_text(json.dumps(
        {k: v if plain_strings and isinstance(v, str) else json.dumps(v) for k, v in hyperparameters.items()}))
    (config / "inputdataconfig.json").write_text("{}")
    return root


@pytest.fixture
def compose(docker, train_image, tmp_path):
    """A unique compose project of docker/compose/two-hosts.yml (what users run), on the image
    under test; `down -v` removes its containers and network whatever the test did."""
    project = f"byoc-test-{uuid.uuid4().hex[:8]}"
    override = tmp_path / "override.yml"
    override.write_text(json.dumps({"services": {h: {"image": train_image} for h in ("algo-1", "algo-2")}}))
    base = [docker, "compose", "-p", project, "-f", str(COMPOSE_FILE), "-f", str(override)]
    yield base, override
    subprocess.run([*base, "down", "-v", "--remove-orphans"], capture_output=True,
                   env={**os.environ, "JOB_DIR": str(tmp_path)})


def container_of(base, host, run_env) -> str:
    """The id of the compose project's container for `host`, running or exited."""
    return subprocess.run([*base, "ps", "-a", "-q", host], check=True, capture_output=True, text=True,
                          env=run_env).stdout.strip()


def run_two_hosts(compose, tmp_path, hyperparameters, env=None, timeout=300, resources=None, plain_strings=False):
    """`docker compose up -d` both hosts, then wait for both containers to exit (SageMaker waits
    for every host). Returns ({host: exit code}, {host: logs}, seconds until the last one exited)."""
    base, override = compose
    for host in ("algo-1", "algo-2"):
        job_tree(tmp_path / host, host, hyperparameters, resources, plain_strings)
    if env:
        services = json.loads(override.read_text())["services"]
        for service in services.values():
            service["environment"] = env
        override.write_text(json.dumps({"services": services}))
    run_env = {**os.environ, "JOB_DIR": str(tmp_path)}
    started = time.monotonic()
    subprocess.run([*base, "up", "-d", "--no-build", "--pull", "never"], check=True, capture_output=True,
                   env=run_env, timeout=120)
    codes, logs = {}, {}
    for host in ("algo-1", "algo-2"):
        codes[host] = subprocess.run([base[0], "wait", container_of(base, host, run_env)], capture_output=True,
                                     text=True, timeout=timeout).stdout.strip()
    elapsed = time.monotonic() - started
    for host in ("algo-1", "algo-2"):
        out = subprocess.run([*base, "logs", "--no-log-prefix", host], capture_output=True, text=True, env=run_env)
        logs[host] = out.stdout + out.stderr
    return codes, logs, elapsed


def test_horovod_over_mpi_across_two_hosts(compose, tmp_path):
    hps = {"sagemaker_program": "hvd.py", "sagemaker_mpi_enabled": True,
           "sagemaker_mpi_num_of_processes_per_host": 1}
    codes, logs, _ = run_two_hosts(compose, tmp_path, hps)
    # SageMaker waits for every host's container: both must exit, and exit 0
    assert set(codes.values()) == {"0"}, {h: (codes[h], logs[h][-3000:]) for h in codes}
    assert "rank 0 of 2 on algo-1 sum 3" in logs["algo-1"] and "rank 1 of 2 on algo-2 sum 3" in logs["algo-1"]
    assert (tmp_path / "algo-1" / "model" / "result.txt").read_text() == "3"
    assert (tmp_path / "algo-1" / "output" / "success").exists()


def test_ddp_over_gloo_with_torchrun_across_two_hosts(compose, tmp_path):
    hps = {"sagemaker_program": "ddp.py", "sagemaker_torch_distributed_enabled": True}
    codes, logs, _ = run_two_hosts(compose, tmp_path, hps)
    assert set(codes.values()) == {"0"}, {h: (codes[h], logs[h][-3000:]) for h in codes}
    assert "rank 0 of 2 on algo-1 sum 3" in logs["algo-1"]
    assert "rank 1 of 2 on algo-2 sum 3" in logs["algo-2"]
    assert (tmp_path / "algo-1" / "model" / "result.txt").read_text() == "3"


def test_ddp_with_the_v3_sdks_resourceconfig_and_its_ethwe(compose, tmp_path):
    """SDK v3's local mode writes network_interface_name "ethwe" (and plain-string hyperparameters);
    the containers have eth0 only: train uses the interface that routes to algo-1, and says so."""
    hps = {"sagemaker_program": "ddp.py", "sagemaker_torch_distributed_enabled": "true"}
    v3 = {"hosts": ["algo-1", "algo-2"], "network_interface_name": "ethwe", "current_instance_type": "local"}
    codes, logs, _ = run_two_hosts(compose, tmp_path, hps, resources=v3, plain_strings=True)
    assert set(codes.values()) == {"0"}, {h: (codes[h], logs[h][-3000:]) for h in codes}
    for host in ("algo-1", "algo-2"):
        assert "network interface 'ethwe'" in logs[host] and "using eth0" in logs[host], logs[host][-3000:]
    assert "rank 1 of 2 on algo-2 sum 3" in logs["algo-2"]
    assert (tmp_path / "algo-1" / "model" / "result.txt").read_text() == "3"


def test_one_failing_rank_ends_the_whole_job_with_its_reason(compose, tmp_path):
    hps = {"sagemaker_program": "ddp.py", "sagemaker_torch_distributed_enabled": True}
    codes, logs, elapsed = run_two_hosts(compose, tmp_path, hps,
                                         env={"FAIL_RANK": "1"}, timeout=120)
    assert codes["algo-1"] != "0" and codes["algo-2"] != "0", codes
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end after a rank failed"
    failure = (tmp_path / "algo-2" / "output" / "failure").read_text()
    assert "rank" in failure.splitlines()[0] and "bad shard" in failure


@pytest.mark.parametrize("hyperparameters", [
    pytest.param({"sagemaker_program": "part.py"}, id="a-part-per-host"),
    pytest.param({"sagemaker_program": "ddp.py", "sagemaker_torch_distributed_enabled": True}, id="torchrun"),
])
def test_hosts_end_together_under_abort_on_container_exit(compose, tmp_path, hyperparameters):
    """SageMaker local mode runs `compose up --abort-on-container-exit`: the first container to
    exit stops the others. The hosts wait for each other at the end, so that no host's work is
    cut short (SageMaker itself waits for every host)."""
    base, _ = compose
    for host in ("algo-1", "algo-2"):
        job_tree(tmp_path / host, host, hyperparameters)
    run_env = {**os.environ, "JOB_DIR": str(tmp_path)}
    up = subprocess.run([*base, "up", "--abort-on-container-exit", "--no-build", "--pull", "never"],
                        capture_output=True, text=True, env=run_env, timeout=300)
    codes = {host: subprocess.run([base[0], "inspect", "-f", "{{.State.ExitCode}}", container_of(base, host, run_env)],
                                  capture_output=True, text=True, check=True).stdout.strip()
             for host in ("algo-1", "algo-2")}
    assert codes == {"algo-1": "0", "algo-2": "0"}, (codes, up.stdout[-4000:])
    if hyperparameters["sagemaker_program"] == "part.py":
        for host in ("algo-1", "algo-2"):
            assert json.loads((tmp_path / host / "model" / f"part-{host}.json").read_text()) == {"host": host}
        log = subprocess.run([*base, "logs", "--no-log-prefix", "algo-1"], capture_output=True, text=True,
                             env=run_env)
        assert "waiting for the other 1 host(s) to finish" in log.stdout + log.stderr, log.stdout[-3000:]
    else:
        assert (tmp_path / "algo-1" / "model" / "result.txt").read_text() == "3"
    for host in ("algo-1", "algo-2"):
        assert (tmp_path / host / "output" / "success").exists()
