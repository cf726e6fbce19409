"""Launchers: which launcher runs the training program on this host, and its command line.

Pure: lists of strings from plain values, so each launcher's command line is unit-tested
(the one name lookup, master_address_env's, is passed in). Running the command is train.relay's
job; the hosts meeting on the job's sync port is train.rendezvous's (MPI) and
train.finish_line's (the end of every multi-host job).

LaunchPlan.env is the environment every program of the job gets on top of the SM_* variables,
where the user's own settings (e.g. the estimator's environment=) win: MASTER_ADDR/MASTER_PORT
for every launcher (master_address_env), the socket interface for torchrun across hosts.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field

from train import netif
from train.contract import BUILTIN_TRAINER_MODULE, Contract

SMDDP_NOTICE = (
    "SageMaker's distributed data-parallel library (smdistributed.dataparallel) is closed source "
    "and only available in AWS's own images; this image runs the job with torchrun and PyTorch DDP "
    "over NCCL (gloo on CPU) instead. Initialise with torch.distributed.init_process_group()."
)
SSHD = "/usr/sbin/sshd"
MASTER_PORT = "7777"  # what AWS's PyTorch training containers export for every job
LOOPBACK = "127.0.0.1"


# -- what one rank runs -------------------------------------------------------------


@dataclass(frozen=True)
class EntryPoint:
    """The program a rank runs: a Python script, a Python module, or any executable."""

    kind: str  # "script", "module" or "command"
    target: str  # path of the script/command, or the module name
    args: list = field(default_factory=list)


def entry_point_for(contract: Contract) -> EntryPoint:
    """The user's program (SAGEMAKER_PROGRAM), or the built-in trainer when none is given."""
    args = contract.user_args()
    if contract.program is None:
        return EntryPoint("module", BUILTIN_TRAINER_MODULE, args)
    path = str(contract.code_dir / contract.program)
    kind = "script" if contract.program.endswith(".py") else "command"
    return EntryPoint(kind, path, args)


def python_argv(entry: EntryPoint, python: str = sys.executable) -> list:
    """The argv of a single rank, without any launcher."""
    if entry.kind == "script":
        return [python, entry.target, *entry.args]
    if entry.kind == "module":
        return [python, "-m", entry.target, *entry.args]
    return [entry.target, *entry.args]


# -- launcher command lines (pure) ------------------------------------------------------


def single_process_command(entry: EntryPoint, python: str = sys.executable) -> list:
    return python_argv(entry, python)


def torchrun_command(
    entry: EntryPoint,
    hosts: list,
    current_host: str,
    nproc_per_node: int,
    port: int = 29500,
    python: str = sys.executable,
) -> list:
    """torchrun over all hosts: static rendezvous on the first host, node rank = host's index.

    Run as `python -m torch.distributed.run` so it is the same interpreter as ours.
    """
    command = [python, "-m", "torch.distributed.run", "--nnodes", str(len(hosts))]
    command += ["--nproc_per_node", str(nproc_per_node)]
    if len(hosts) == 1:
        # localhost rendezvous on a free port: works without a resolvable 'algo-1'
        command += ["--standalone"]
    else:
        command += ["--node_rank", str(hosts.index(current_host))]
        command += ["--master_addr", hosts[0], "--master_port", str(port)]
    if entry.kind == "module":
        command += ["-m", entry.target]
    elif entry.kind == "command":
        command += ["--no_python", entry.target]
    else:
        command += [entry.target]
    return command + list(entry.args)


def split_custom_mpi_options(options: str) -> tuple:
    """(NCCL_DEBUG value, remaining options): --NCCL_DEBUG X is ours to apply, as in sagemaker-training."""
    words = shlex.split(options or "")
    nccl_debug = "INFO"
    rest = []
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--NCCL_DEBUG" and index + 1 < len(words):
            nccl_debug = words[index + 1]
            index += 2
            continue
        if word.startswith("--NCCL_DEBUG="):
            nccl_debug = word.split("=", 1)[1]
        else:
            rest.append(word)
        index += 1
    return nccl_debug, rest


def mpirun_command(
    entry: EntryPoint,
    hosts: list,
    processes_per_host: int,
    interface: str,
    env_names: list,
    custom_options: str = "",
    num_processes: int | None = None,
    python: str = sys.executable,
) -> list:
    """mpirun across all hosts over ssh, run by the leader only; options as sagemaker-training's.

    orte_abort_on_non_zero_status: one failing rank ends every rank (no hang).
    env_names: variables exported to every rank with -x (values from mpirun's env).
    """
    nccl_debug, extra_options = split_custom_mpi_options(custom_options)
    total = num_processes or processes_per_host * len(hosts)
    # One host: "localhost", because a plain `docker run` (no --hostname) cannot resolve algo-1,
    # and mpirun would try to ssh to it.
    names = hosts if len(hosts) > 1 else ["localhost"]
    command = ["mpirun", "--host", ",".join(f"{host}:{processes_per_host}" for host in names)]
    command += ["-np", str(total), "--allow-run-as-root", "--tag-output"]
    command += ["-mca", "plm_rsh_agent", "ssh"]
    command += ["-mca", "plm_rsh_args", "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"]
    command += ["-mca", "plm_rsh_no_tree_spawn", "1"]
    command += ["-mca", "btl_tcp_if_include", interface, "-mca", "oob_tcp_if_include", interface]
    command += ["-mca", "pml", "ob1", "-mca", "btl", "^openib"]
    command += ["-mca", "orte_abort_on_non_zero_status", "1"]
    command += ["-mca", "btl_vader_single_copy_mechanism", "none"]
    command += ["-bind-to", "none", "-map-by", "slot"]
    command += ["-x", f"NCCL_SOCKET_IFNAME={interface}", "-x", f"NCCL_DEBUG={nccl_debug}"]
    for name in ["PATH", "LD_LIBRARY_PATH", "PYTHONPATH", *env_names]:
        command += ["-x", name]
    command += extra_options
    return command + python_argv(entry, python)


def socket_interface_env(contract: Contract) -> dict:
    """The network interface NCCL and gloo use between hosts (resourceconfig's
    network_interface_name). The one place train exports it; mpirun_command passes the
    same interface to mpirun's own transports."""
    return {
        "NCCL_SOCKET_IFNAME": contract.network_interface_name,
        "GLOO_SOCKET_IFNAME": contract.network_interface_name,
    }


def master_address_env(contract: Contract, resolves=netif.resolves) -> dict:
    """MASTER_ADDR (the first host) and MASTER_PORT (7777), as AWS's PyTorch training container
    sets them for every job: a script that calls init_process_group(backend, rank=...,
    world_size=...) with the default env:// reads both. torchrun overwrites them for its ranks
    with its own rendezvous; mpirun exports them to every rank.

    One exception: a one-host job whose host name does not resolve here (a plain `docker run`
    without --hostname: no algo-1) gets 127.0.0.1, the same machine. With an unresolvable name,
    rank 0's TCPStore retries until init_process_group's timeout (30 min by default).
    """
    address = contract.leader_host
    if len(contract.hosts) == 1 and not resolves(address):
        address = LOOPBACK
    return {"MASTER_ADDR": address, "MASTER_PORT": MASTER_PORT}


# -- the plan for this host ------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchPlan:
    """What this host does: run `command`, or (MPI worker) serve sshd until the leader is done."""

    launcher: str  # "process", "torchrun", "mpi" or "mpi-worker"
    command: list
    env: dict  # variables to add to the child's environment (the user's own values win)
    notices: list = field(default_factory=list)  # messages for the log


def plan_launch(
    contract: Contract, sm_env: dict, python: str = sys.executable, resolves=netif.resolves
) -> LaunchPlan:
    """Pick the launcher from the contract's distribution and build its command."""
    entry = entry_point_for(contract)
    distribution = contract.distribution
    notices = [SMDDP_NOTICE] if distribution.smddp_requested else []
    multi_host = len(contract.hosts) > 1
    interface_env = socket_interface_env(contract) if multi_host else {}
    master_env = master_address_env(contract, resolves)

    if distribution.launcher == "torchrun":
        command = torchrun_command(
            entry,
            contract.hosts,
            contract.current_host,
            contract.processes_per_host,
            contract.settings.torchrun_port,
            python,
        )
        return LaunchPlan("torchrun", command, {**master_env, **interface_env}, notices)
    if distribution.launcher == "mpi":
        if not contract.is_leader:
            # sshd only: the ranks on this host get the leader's variables through mpirun -x
            return LaunchPlan("mpi-worker", [SSHD, "-D"], {}, notices)
        command = mpirun_command(
            entry,
            contract.hosts,
            contract.processes_per_host,
            contract.network_interface_name,
            sorted(sm_env) + sorted(master_env),
            distribution.custom_mpi_options,
            distribution.num_processes,
            python,
        )
        return LaunchPlan("mpi", command, master_env, notices)
    if multi_host:
        notices.append(
            f"{len(contract.hosts)} hosts and no distribution asked for: each host runs its own copy of the "
            "program (MASTER_ADDR and MASTER_PORT name the first host, for a program that calls "
            "init_process_group itself)"
        )
    return LaunchPlan("process", single_process_command(entry, python), master_env, notices)
