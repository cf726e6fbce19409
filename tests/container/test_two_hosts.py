"""Two hosts (algo-1, algo-2) as SageMaker runs them: one container each on one
network, each with its own /opt/ml and resourceconfig.json."""
import json
import subprocess
import textwrap
import uuid

import pytest

HOROVOD_SCRIPT = """
import os, socket, torch, horovod.torch as hvd
hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum)
print(f"rank {hvd.rank()} of {hvd.size()} on {socket.gethostname()} sum {int(total.item())}", flush=True)
if hvd.rank() == 0:
    open(os.path.join(os.environ["SM_MODEL_DIR"], "result.txt"), "w").write(str(int(total.item())))
"""


def job_tree(root, host, hyperparameters):
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (root / "code").mkdir()
    (root / "code" / "hvd.py").write_text(textwrap.dedent(HOROVOD_SCRIPT))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": host, "hosts": ["algo-1", "algo-2"], "network_interface_name": "eth0"}))
    (config / "hyperparameters.json").write_text(json.dumps({k: json.dumps(v) for k, v in hyperparameters.items()}))
    (config / "inputdataconfig.json").write_text("{}")
    return root


@pytest.fixture
def network(docker):
    name = f"byoc-test-{uuid.uuid4().hex[:8]}"
    subprocess.run([docker, "network", "create", name], check=True, capture_output=True)
    containers = []
    yield name, containers
    subprocess.run([docker, "rm", "-f", *containers], capture_output=True)
    subprocess.run([docker, "network", "rm", name], capture_output=True)


def test_horovod_over_mpi_across_two_hosts(docker, train_image, network, tmp_path):
    net, containers = network
    hps = {"sagemaker_program": "hvd.py", "sagemaker_mpi_enabled": True,
           "sagemaker_mpi_num_of_processes_per_host": 1}
    for host in ("algo-2", "algo-1"):
        root = job_tree(tmp_path / host, host, hps)
        name = f"{net}-{host}"
        subprocess.run([docker, "run", "-d", "--name", name, "--hostname", host, "--network", net,
                        "--network-alias", host, "-v", f"{root}:/opt/ml", train_image, "train"],
                       check=True, capture_output=True)
        containers.append(name)
    # SageMaker waits for every host's container: both must exit, and exit 0
    codes = {}
    for name in containers:
        waited = subprocess.run([docker, "wait", name], capture_output=True, text=True, timeout=300)
        codes[name] = waited.stdout.strip()
    logs = {name: subprocess.run([docker, "logs", name], capture_output=True, text=True) for name in containers}
    leader = logs[f"{net}-algo-1"]
    assert set(codes.values()) == {"0"}, {n: (codes[n], logs[n].stdout[-1500:] + logs[n].stderr[-1500:]) for n in containers}
    output = leader.stdout + leader.stderr
    assert "rank 0 of 2 on algo-1 sum 3" in output and "rank 1 of 2 on algo-2 sum 3" in output
    assert (tmp_path / "algo-1" / "model" / "result.txt").read_text() == "3"
    assert (tmp_path / "algo-1" / "output" / "success").exists()
