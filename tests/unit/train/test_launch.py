"""Launcher command lines (pure), the process runner, and the hosts meeting on the sync port."""

import dataclasses
import shutil
import sys
import threading
import time

import pytest

from train import finish_line, launch, relay, rendezvous, sync
from train.contract import Distribution, load_contract
from train.launch import EntryPoint

PY = "/usr/bin/python3"
SCRIPT = EntryPoint("script", "/opt/ml/code/train.py", ["--epochs", "2"])
RESOLVES = lambda host: True  # noqa: E731  (host names resolve, as in SageMaker and local mode)


def contract_for(tmp_path, hosts=("algo-1",), current="algo-1", gpus=0, program="train.py", **distribution):
    base = load_contract({"BYOC_ML_ROOT": str(tmp_path)}, num_gpus=gpus)
    return dataclasses.replace(
        base,
        hosts=list(hosts),
        current_host=current,
        program=program,
        hyperparameters={"epochs": 2},
        distribution=Distribution(**distribution),
    )


def after(command, flag):
    return command[command.index(flag) + 1]


# -- single process ---------------------------------------------------------------------


def test_single_process_script_module_and_command():
    assert launch.single_process_command(SCRIPT, PY) == [PY, "/opt/ml/code/train.py", "--epochs", "2"]
    module = EntryPoint("module", "train.classify", ["--arch", "resnet18"])
    assert launch.single_process_command(module, PY) == [PY, "-m", "train.classify", "--arch", "resnet18"]
    assert launch.single_process_command(EntryPoint("command", "/c/run.sh", ["-x", "1"]), PY) == ["/c/run.sh", "-x", "1"]


def test_plan_single_process_user_script(tmp_path):
    plan = launch.plan_launch(contract_for(tmp_path), {}, PY)
    assert plan.launcher == "process"
    assert plan.command == [PY, f"{tmp_path}/code/train.py", "--epochs", "2"]
    assert plan.notices == []


def test_plan_builtin_trainer_when_no_program(tmp_path):
    plan = launch.plan_launch(contract_for(tmp_path, program=None), {}, PY)
    assert plan.command == [PY, "-m", "train.classify", "--epochs", "2"]


def test_plan_shell_program_runs_as_command(tmp_path):
    plan = launch.plan_launch(contract_for(tmp_path, program="bin/run.sh"), {}, PY)
    assert plan.command == [f"{tmp_path}/code/bin/run.sh", "--epochs", "2"]


# -- torchrun ------------------------------------------------------------------------------


def test_torchrun_one_host_is_standalone():
    command = launch.torchrun_command(SCRIPT, ["algo-1"], "algo-1", nproc_per_node=1, python=PY)
    assert command == [
        PY, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "1", "--standalone",
        "/opt/ml/code/train.py", "--epochs", "2",
    ]


def test_torchrun_two_hosts_rendezvous_on_first_host():
    command = launch.torchrun_command(SCRIPT, ["algo-1", "algo-2"], "algo-2", nproc_per_node=8, port=29511, python=PY)
    assert after(command, "--nnodes") == "2"
    assert after(command, "--nproc_per_node") == "8"
    assert after(command, "--node_rank") == "1"
    assert after(command, "--master_addr") == "algo-1"
    assert after(command, "--master_port") == "29511"
    assert "--standalone" not in command
    assert command[-3:] == ["/opt/ml/code/train.py", "--epochs", "2"]


def test_torchrun_module_and_command_entry_points():
    module = launch.torchrun_command(EntryPoint("module", "train.classify", []), ["algo-1"], "algo-1", 2, python=PY)
    assert module[-2:] == ["-m", "train.classify"]
    command = launch.torchrun_command(EntryPoint("command", "/c/run.sh", []), ["algo-1"], "algo-1", 2, python=PY)
    assert command[-2:] == ["--no_python", "/c/run.sh"]


def test_plan_torchrun_uses_gpus_and_interface(tmp_path):
    contract = contract_for(
        tmp_path, hosts=("algo-1", "algo-2"), current="algo-1", gpus=4, launcher="torchrun"
    )
    plan = launch.plan_launch(contract, {}, PY)
    assert plan.launcher == "torchrun"
    assert after(plan.command, "--nproc_per_node") == "4"
    assert after(plan.command, "--node_rank") == "0"
    assert plan.env == {"NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0",
                        "MASTER_ADDR": "algo-1", "MASTER_PORT": "7777"}


def test_plan_torchrun_on_cpu_runs_one_rank_per_host(tmp_path):
    plan = launch.plan_launch(contract_for(tmp_path, gpus=0, launcher="torchrun"), {}, PY, resolves=RESOLVES)
    assert after(plan.command, "--nproc_per_node") == "1"
    # one host: no socket interface; MASTER_* as for every job (torchrun sets its own for its ranks)
    assert plan.env == {"MASTER_ADDR": "algo-1", "MASTER_PORT": "7777"}


def test_plan_smddp_falls_back_to_torchrun_and_says_so(tmp_path):
    contract = contract_for(tmp_path, gpus=8, launcher="torchrun", smddp_requested=True)
    plan = launch.plan_launch(contract, {}, PY)
    assert plan.launcher == "torchrun"
    assert plan.command[1:3] == ["-m", "torch.distributed.run"]
    assert any("closed source" in notice and "AWS" in notice and "NCCL" in notice for notice in plan.notices)


# -- mpirun ------------------------------------------------------------------------------------


def test_mpirun_two_hosts_with_custom_options():
    command = launch.mpirun_command(
        SCRIPT,
        ["algo-1", "algo-2"],
        processes_per_host=4,
        interface="eth0",
        env_names=["SM_HPS", "SM_HP_EPOCHS"],
        custom_options="--NCCL_DEBUG WARN -x HOROVOD_FUSION_THRESHOLD=0 --mca btl_tcp_if_exclude lo",
        python=PY,
    )
    assert command[0] == "mpirun"
    assert after(command, "--host") == "algo-1:4,algo-2:4"
    assert after(command, "-np") == "8"
    assert "--allow-run-as-root" in command
    text = " ".join(command)
    assert "-mca btl_tcp_if_include eth0" in text
    assert "-mca oob_tcp_if_include eth0" in text
    assert "-mca plm_rsh_agent ssh" in text
    assert "-mca orte_abort_on_non_zero_status 1" in text
    assert "-x NCCL_SOCKET_IFNAME=eth0" in text
    assert "-x NCCL_DEBUG=WARN" in text and "NCCL_DEBUG=INFO" not in text
    assert "-x SM_HPS -x SM_HP_EPOCHS" in text
    assert "-x PYTHONPATH" in text
    # custom options come last, right before the program
    tail = command[command.index("HOROVOD_FUSION_THRESHOLD=0") - 1 :]
    assert tail == [
        "-x", "HOROVOD_FUSION_THRESHOLD=0", "--mca", "btl_tcp_if_exclude", "lo",
        PY, "/opt/ml/code/train.py", "--epochs", "2",
    ]


def test_mpirun_num_processes_overrides_total():
    command = launch.mpirun_command(SCRIPT, ["algo-1", "algo-2"], 4, "eth0", [], num_processes=6, python=PY)
    assert after(command, "-np") == "6"


def test_split_custom_mpi_options():
    assert launch.split_custom_mpi_options("") == ("INFO", [])
    assert launch.split_custom_mpi_options("--NCCL_DEBUG=TRACE -verbose") == ("TRACE", ["-verbose"])
    assert launch.split_custom_mpi_options("-x 'A=b c'") == ("INFO", ["-x", "A=b c"])


def test_plan_mpi_leader_and_worker(tmp_path):
    hosts = ("algo-1", "algo-2")
    leader = launch.plan_launch(
        contract_for(tmp_path, hosts=hosts, current="algo-1", gpus=2, launcher="mpi"), {"SM_HPS": "{}"}, PY
    )
    assert leader.launcher == "mpi"
    assert after(leader.command, "--host") == "algo-1:2,algo-2:2"
    assert "SM_HPS" in leader.command
    worker = launch.plan_launch(
        contract_for(tmp_path, hosts=hosts, current="algo-2", gpus=2, launcher="mpi"), {}, PY
    )
    assert worker.launcher == "mpi-worker"
    assert worker.command == ["/usr/sbin/sshd", "-D"]


def test_plan_mpi_processes_per_host_from_hyperparameter(tmp_path):
    contract = contract_for(tmp_path, gpus=8, launcher="mpi", processes_per_host=2)
    # one host: localhost, which resolves even without `docker run --hostname algo-1`
    assert after(launch.plan_launch(contract, {}, PY).command, "--host") == "localhost:2"


# -- MASTER_ADDR / MASTER_PORT -------------------------------------------------------------------


@pytest.mark.parametrize("launcher", ["process", "torchrun", "mpi"])
@pytest.mark.parametrize("current", ["algo-1", "algo-2"])
def test_every_launcher_names_the_first_host_and_port_7777(tmp_path, launcher, current):
    """As AWS's PyTorch training container does for every job: a 2-host job with no distribution
    whose script calls init_process_group(backend, rank=..., world_size=...) needs both."""
    def no_lookup(host):
        raise AssertionError("a multi-host job must not fall back to 127.0.0.1")

    contract = contract_for(tmp_path, hosts=("algo-1", "algo-2"), current=current, launcher=launcher)
    plan = launch.plan_launch(contract, {"SM_HPS": "{}"}, PY, resolves=no_lookup)
    if plan.launcher == "mpi-worker":  # sshd: its ranks get the leader's values through mpirun -x
        assert plan.env == {}
        return
    assert plan.env["MASTER_ADDR"] == "algo-1"
    assert plan.env["MASTER_PORT"] == "7777"


def test_one_host_gets_its_own_name(tmp_path):
    plan = launch.plan_launch(contract_for(tmp_path), {}, PY, resolves=RESOLVES)
    assert plan.env == {"MASTER_ADDR": "algo-1", "MASTER_PORT": "7777"}


def test_one_host_whose_name_does_not_resolve_gets_loopback(tmp_path):
    """A plain `docker run` has no algo-1: with that name rank 0's TCPStore would retry for
    30 minutes instead of starting; 127.0.0.1 is the same machine."""
    looked_up = []

    def unresolvable(host):
        looked_up.append(host)
        return False

    plan = launch.plan_launch(contract_for(tmp_path), {}, PY, resolves=unresolvable)
    assert looked_up == ["algo-1"]
    assert plan.env == {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "7777"}


def test_mpirun_exports_master_addr_and_port_to_every_rank(tmp_path):
    contract = contract_for(tmp_path, hosts=("algo-1", "algo-2"), launcher="mpi")
    plan = launch.plan_launch(contract, {"SM_HPS": "{}"}, PY)
    # the ranks on the other host only get what mpirun exports with -x (values from mpirun's env)
    text = " ".join(plan.command)
    assert "-x MASTER_ADDR" in text and "-x MASTER_PORT" in text and "-x SM_HPS" in text


def test_resolves_on_this_machine():
    assert launch.netif.resolves("localhost")
    assert not launch.netif.resolves("no-such-host.invalid")


# -- running ---------------------------------------------------------------------------------------


def test_run_keeps_the_end_of_stderr_and_the_exit_code():
    code = "import sys; sys.stderr.write('x' * 20000 + 'THE END'); sys.exit(3)"
    result = relay.run_relaying_signals([sys.executable, "-c", code], env=None, tail_bytes=100)
    assert result.returncode == 3
    assert result.stderr_tail.endswith("THE END") and len(result.stderr_tail) == 100
    assert result.stopped_by is None


def test_run_reports_death_by_signal_as_128_plus_n():
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert relay.run_relaying_signals([sys.executable, "-c", code], env=None).returncode == 137


def test_stderr_tee_tail_is_bounded():
    tee = relay.StderrTee(pipe=None, limit=10)
    for chunk in (b"abc", b"defgh", b"ijklmnop"):
        tee._keep(chunk)
    assert b"".join(tee.tail)[-10:] == b"ghijklmnop"
    assert tee.size - len(tee.tail[0]) < 10


# -- MPI leader and worker meet over TCP --------------------------------------------------------------


def test_mpi_worker_exits_when_leader_releases_it(tmp_path, free_port):
    port = free_port()
    leader_saw = {}

    def leader():
        ready = rendezvous.wait_for_mpi_workers(port, workers=1, wait_s=10, public_key=b"ssh-ed25519 AAAA job")
        leader_saw["workers"] = len(ready.connections)
        time.sleep(0.3)  # "mpirun" runs; the worker must still be serving
        leader_saw["released_at"] = time.monotonic()
        ready.release()

    thread = threading.Thread(target=leader)
    thread.start()
    # the worker (main thread: it installs signal handlers) retries until the leader listens
    keys = tmp_path / "ssh" / "authorized_keys"
    assert rendezvous.serve_as_mpi_worker("127.0.0.1", port, wait_s=10, sshd_command=None, authorized_keys=keys) == 0
    assert keys.read_text() == "ssh-ed25519 AAAA job\n"     # the job's key, handed over by the leader
    assert keys.stat().st_mode & 0o777 == 0o600
    assert time.monotonic() >= leader_saw["released_at"]
    thread.join(5)
    assert leader_saw["workers"] == 1


def test_mpi_leader_gives_up_when_workers_do_not_come(free_port):
    with pytest.raises(TimeoutError, match="0 of 1 MPI worker hosts"):
        rendezvous.wait_for_mpi_workers(free_port(), workers=1, wait_s=0.2)


def test_mpi_worker_gives_up_when_leader_never_comes(free_port):
    with pytest.raises(TimeoutError, match="not reachable"):
        sync.connect_with_retry("127.0.0.1", free_port(), wait_s=0.5)


def test_job_ssh_key_is_made_once_per_job(tmp_path):
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not installed")
    key = tmp_path / ".ssh" / "id_ed25519"
    public = rendezvous.make_job_ssh_key(key)
    assert public.startswith(b"ssh-ed25519 ") and key.stat().st_mode & 0o777 == 0o600
    assert rendezvous.make_job_ssh_key(key) == public     # a rerun on the same host keeps it


# -- multi-host jobs end together ------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_thread(fn):
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def test_hosts_end_together_when_the_slowest_one_is_done():
    port = _free_port()
    leader = finish_line.FinishLine(port, workers=2, wait_s=30)
    fast = finish_line.FinishLineWorker("127.0.0.1", port, wait_s=30)
    slow = finish_line.FinishLineWorker("127.0.0.1", port, wait_s=30)
    results = {}
    waiting = _in_thread(lambda: results.update(done=leader.cross()))
    fast_host = _in_thread(fast.cross)
    # the fast host and the first host both wait while the slow host still works
    fast_host.join(0.5)
    waiting.join(0.1)
    assert fast_host.is_alive() and waiting.is_alive()
    slow_host = _in_thread(slow.cross)
    for thread in (waiting, fast_host, slow_host):
        thread.join(10)
        assert not thread.is_alive()
    assert results == {"done": 2}


def test_a_worker_host_that_fails_does_not_hold_the_others():
    port = _free_port()
    leader = finish_line.FinishLine(port, workers=1, wait_s=30)
    failed = finish_line.FinishLineWorker("127.0.0.1", port, wait_s=30)
    failed.thread.join(10)
    failed.connection.close()          # its process exited without saying done
    started = time.monotonic()
    assert leader.cross() == 0
    assert time.monotonic() - started < 5


def test_a_worker_host_that_never_connects_is_waited_for_only_until_the_deadline():
    leader = finish_line.FinishLine(_free_port(), workers=1, wait_s=0.5)
    started = time.monotonic()
    assert leader.cross() == 0
    assert time.monotonic() - started < 5


def test_a_worker_host_that_cannot_reach_the_first_host_ends_on_its_own():
    worker = finish_line.FinishLineWorker("127.0.0.1", _free_port(), wait_s=1)
    done = _in_thread(worker.cross)
    done.join(10)
    assert not done.is_alive() and worker.connection is None


def test_the_first_host_failing_releases_the_worker_hosts():
    port = _free_port()
    leader = finish_line.FinishLine(port, workers=1, wait_s=30)
    worker = finish_line.FinishLineWorker("127.0.0.1", port, wait_s=30)
    worker.thread.join(10)
    time.sleep(0.2)                    # the leader's accept thread holds the connection
    for connection in leader.connections:
        connection.close()             # the first host's process is gone
    leader.listener.close()
    done = _in_thread(worker.cross)
    done.join(10)
    assert not done.is_alive()
