"""Launchers: what command runs the training program, and running it.

Command building is pure (lists of strings from plain values) so each
launcher's command line is unit-tested. Running is ours, not
sagemaker-training's: that one forwards no SIGTERM to the script, busy-waits
for MPI workers, and loses the error message. Here the child runs in its own
process group, SIGTERM/SIGINT are relayed to the whole group, SIGKILL follows
after a grace period, and the end of the child's stderr is kept for the
failure file while it streams to our stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from train.contract import BUILTIN_TRAINER_MODULE, Contract

log = logging.getLogger("train")

SMDDP_NOTICE = (
    "SageMaker's distributed data-parallel library (smdistributed.dataparallel) is closed source "
    "and only available in AWS's own images; this image runs the job with torchrun and PyTorch DDP "
    "over NCCL (gloo on CPU) instead. Initialise with torch.distributed.init_process_group()."
)
SSHD = "/usr/sbin/sshd"


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


# -- the plan for this host ------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchPlan:
    """What this host does: run `command`, or (MPI worker) serve sshd until the leader is done."""

    launcher: str  # "process", "torchrun", "mpi" or "mpi-worker"
    command: list
    env: dict  # variables to add to the child's environment
    notices: list = field(default_factory=list)  # messages for the log


def plan_launch(contract: Contract, sm_env: dict, python: str = sys.executable) -> LaunchPlan:
    """Pick the launcher from the contract's distribution and build its command."""
    entry = entry_point_for(contract)
    distribution = contract.distribution
    notices = [SMDDP_NOTICE] if distribution.smddp_requested else []
    multi_host = len(contract.hosts) > 1
    interface_env = {}
    if multi_host:
        interface_env = {
            "NCCL_SOCKET_IFNAME": contract.network_interface_name,
            "GLOO_SOCKET_IFNAME": contract.network_interface_name,
        }

    if distribution.launcher == "torchrun":
        command = torchrun_command(
            entry,
            contract.hosts,
            contract.current_host,
            contract.processes_per_host,
            contract.settings.torchrun_port,
            python,
        )
        return LaunchPlan("torchrun", command, interface_env, notices)
    if distribution.launcher == "mpi":
        if not contract.is_leader:
            return LaunchPlan("mpi-worker", [SSHD, "-D"], {}, notices)
        command = mpirun_command(
            entry,
            contract.hosts,
            contract.processes_per_host,
            contract.network_interface_name,
            sorted(sm_env),
            distribution.custom_mpi_options,
            distribution.num_processes,
            python,
        )
        return LaunchPlan("mpi", command, {}, notices)
    if multi_host:
        notices.append(
            f"{len(contract.hosts)} hosts and no distribution asked for: each host runs its own copy of the program"
        )
    return LaunchPlan("process", single_process_command(entry, python), {}, notices)


# -- running a child with signal relay and a stderr tail -----------------------------------------


@dataclass(frozen=True)
class RunResult:
    returncode: int  # as a shell reports it: 128 + N when killed by signal N
    stderr_tail: str
    stopped_by: int | None = None  # the signal we relayed, if any


class StderrTee:
    """Copy a pipe to our stderr as it streams, keeping the last `limit` bytes."""

    def __init__(self, pipe, limit: int = 8192):
        self.pipe = pipe
        self.tail = deque()
        self.size = 0
        self.limit = limit
        self.thread = threading.Thread(target=self._pump, name="stderr-tee", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _pump(self) -> None:
        out = getattr(sys.stderr, "buffer", None)
        fd = self.pipe.fileno()
        while chunk := os.read(fd, 65536):
            self._keep(chunk)
            try:
                if out is not None:
                    out.write(chunk)
                    out.flush()
                else:
                    sys.stderr.write(chunk.decode("utf-8", "replace"))
            except (OSError, ValueError):
                pass  # our stderr is gone: keep draining, or the child would block on a full pipe

    def _keep(self, chunk: bytes) -> None:
        self.tail.append(chunk)
        self.size += len(chunk)
        while self.size - len(self.tail[0]) >= self.limit:
            self.size -= len(self.tail.popleft())

    def text(self, timeout: float = 5.0) -> str:
        # Grandchildren that outlive the child may hold the pipe open: do not wait forever.
        self.thread.join(timeout)
        data = b"".join(self.tail)[-self.limit :]
        return data.decode("utf-8", "replace")


class SignalRelay:
    """While installed, SIGTERM/SIGINT/SIGHUP go to the child's process group; SIGKILL after a grace period."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, process: subprocess.Popen, grace_s: float):
        self.process = process
        self.grace_s = grace_s
        self.received = None
        self.previous = {}
        self.killer = None

    def __enter__(self):
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._relay)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if self.killer is not None:
            self.killer.cancel()

    def _relay(self, signum, frame):
        log.warning("received %s: relaying it to the training processes", signal.Signals(signum).name)
        self.received = self.received or signum
        send_to_group(self.process.pid, signum)
        if self.killer is None:
            # A timer thread, not a polling loop: fires once unless the child exits first.
            self.killer = threading.Timer(self.grace_s, self._kill)
            self.killer.daemon = True
            self.killer.start()

    def _kill(self):
        if self.process.poll() is None:
            log.error("training processes still running %.0f s after the signal: killing them", self.grace_s)
            send_to_group(self.process.pid, signal.SIGKILL)


def send_to_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def shell_returncode(returncode: int) -> int:
    """Popen's -N (killed by signal N) as the 128 + N a shell and SageMaker report."""
    return 128 - returncode if returncode < 0 else returncode


def run_relaying_signals(
    command: list,
    env: dict,
    cwd: Path | str | None = None,
    grace_s: float = 110.0,
    tail_bytes: int = 32768,
) -> RunResult:
    """Run `command` in its own process group, relay stop signals to it, stream and keep its stderr."""
    log.info("running: %s", shlex.join(str(part) for part in command))
    process = subprocess.Popen(
        [str(part) for part in command],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # own process group: one signal reaches every rank
    )
    tee = StderrTee(process.stderr, tail_bytes)
    tee.start()
    with SignalRelay(process, grace_s) as relay:
        returncode = process.wait()  # blocking wait; signal handlers run while we wait
        # Whatever the child left behind in its group (ranks, daemons) ends with it.
        send_to_group(process.pid, signal.SIGKILL)
    tail = tee.text()
    process.stderr.close()
    return RunResult(shell_returncode(returncode), tail, relay.received)


# -- MPI: the worker hosts and the leader meet over one TCP connection each --------------------------


class Stopped(Exception):
    """A stop signal arrived while waiting."""


def raise_stopped(signum, frame):
    raise Stopped(signal.Signals(signum).name)


def connect_with_retry(host: str, port: int, wait_s: float) -> socket.socket:
    """Connect, retrying while the other side starts (name not yet resolvable, refused)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            connection = socket.create_connection((host, port), timeout=10)
            connection.settimeout(None)
            return connection
        except OSError as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} not reachable after {wait_s:.0f} s: {error}") from None
            time.sleep(1)  # startup only: the other container may not be up yet


def keep_alive(connection: socket.socket) -> None:
    """TCP keepalive, so a leader host that vanishes (no FIN) is noticed in about a minute."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            connection.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def wait_for_leader_to_finish(connection: socket.socket) -> None:
    """Block until the leader closes the connection (it finished, failed or died)."""
    with connection:
        try:
            while connection.recv(1024):
                pass
        except OSError:
            pass  # reset or keepalive timeout: the leader is gone either way


# The ssh key mpirun uses is made per job by the leader and handed to the
# workers over the sync connection, so no key is baked into the image. The
# trade-off: a worker trusts the key that the host named as the job's first
# host sends it; that host name resolves only inside the job's own network.
READY = b"ready\n"


def make_job_ssh_key(private_key: Path) -> bytes:
    """The leader's per-job key pair (ed25519, no passphrase); returns the public key line."""
    if not private_key.exists():
        private_key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "byoc-job", "-f", str(private_key)],
                       check=True, stdin=subprocess.DEVNULL)
    return Path(f"{private_key}.pub").read_bytes().strip()


def authorize_key(public_key: bytes, authorized_keys: Path) -> None:
    authorized_keys.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(authorized_keys, "ab") as f:
        f.write(public_key + b"\n")
    authorized_keys.chmod(0o600)


def read_line(connection: socket.socket, limit: int = 16384) -> bytes:
    """One newline-terminated line from a blocking socket (the peer's whole message)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(limit - len(data))
        if not chunk or len(data) + len(chunk) >= limit:
            raise ConnectionError("the other host closed the connection or sent too much")
        data += chunk
    return data.strip()


def serve_as_mpi_worker(leader: str, port: int, wait_s: float, sshd_command: list | None,
                        authorized_keys: Path | None = None) -> int:
    """An MPI worker host: run sshd for the leader's mpirun, exit when the leader is done.

    The worker connects to the leader, receives the job's public key, authorizes
    it, starts sshd, and says "ready" once sshd accepts connections.
    """
    previous = {sig: signal.signal(sig, raise_stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    sshd = None
    try:
        connection = connect_with_retry(leader, port, wait_s)
        keep_alive(connection)
        public_key = read_line(connection)
        if authorized_keys is not None:
            authorize_key(public_key, authorized_keys)
        if sshd_command:
            subprocess.run(["ssh-keygen", "-A"], check=True, stdout=subprocess.DEVNULL)  # this host's own keys
            log.info("MPI worker: starting %s", shlex.join(sshd_command))
            sshd = subprocess.Popen(sshd_command, start_new_session=True)
            connect_with_retry("127.0.0.1", 22, 30).close()
        connection.sendall(READY)
        log.info("MPI worker: ready for leader %s, waiting for the job to end", leader)
        wait_for_leader_to_finish(connection)
        log.info("MPI worker: leader %s is done", leader)
        return 0
    except Stopped as stop:
        log.warning("MPI worker: received %s, stopping", stop)
        return 128 + signal.SIGTERM
    finally:
        if sshd is not None:
            send_to_group(sshd.pid, signal.SIGTERM)
            sshd.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class MpiWorkers:
    """The leader's side: the sync listener and one open connection per ready worker host."""

    listener: socket.socket
    connections: list = field(default_factory=list)

    def release(self) -> None:
        """Closing the connections tells every worker host the job is over."""
        for connection in self.connections:
            connection.close()
        self.listener.close()


def wait_for_mpi_workers(port: int, workers: int, wait_s: float, public_key: bytes = b"") -> MpiWorkers:
    """Leader: on the sync port, hand each worker host the job's public key and wait
    for its "ready" (blocking accept and reads, with one deadline for all)."""
    ready = MpiWorkers(socket.create_server(("", port)))
    deadline = time.monotonic() + wait_s
    while len(ready.connections) < workers:
        try:
            ready.listener.settimeout(max(deadline - time.monotonic(), 0.001))
            connection, address = ready.listener.accept()
            connection.settimeout(max(deadline - time.monotonic(), 0.001))
            connection.sendall(public_key + b"\n")
            if read_line(connection) + b"\n" != READY:
                raise ConnectionError(f"worker {address[0]} did not say ready")
            connection.settimeout(None)
        except socket.timeout:
            ready.release()
            raise TimeoutError(
                f"only {len(ready.connections)} of {workers} MPI worker hosts were ready within {wait_s:.0f} s"
            ) from None
        log.info("MPI leader: worker %s ready", address[0])
        ready.connections.append(connection)
    return ready


# -- ending a multi-host job together ------------------------------------------------
# SageMaker ends a job once every host's container has exited. Local mode's
# `docker compose up --abort-on-container-exit` stops every host as soon as the
# first one exits, cutting short the hosts still at work: a per-host job whose
# hosts take different times lost the slower hosts' output, a torchrun host still
# shutting down exited 143. So the hosts of a multi-host job (but MPI's, whose
# worker hosts already wait for the leader) end together: each worker host holds
# a connection to the first host while it works, says "done" at its end, and exits
# when the first host closes; the first host closes once every worker host has
# said so or gone. A host whose work failed does not wait: the job has failed.
DONE = b"done\n"


class FinishLine:
    """The first host's side: accepts the worker hosts' connections while the job runs."""

    def __init__(self, port: int, workers: int, wait_s: float):
        self.workers = workers
        self.connect_deadline = time.monotonic() + wait_s
        self.listener = socket.create_server(("", port))
        self.connections: list = []
        self.arrived = threading.Condition()
        threading.Thread(target=self._accept, name="finish-line", daemon=True).start()

    def _accept(self) -> None:
        while len(self.connections) < self.workers:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed by cross()
            keep_alive(connection)
            with self.arrived:
                self.connections.append(connection)
                self.arrived.notify_all()

    def cross(self) -> int:
        """Block until every worker host that connected has said done or gone; returns
        how many said done. Hosts that never connected are waited for only until the
        connect deadline (they may have failed to start)."""
        log.info("waiting for the other %d host(s) to finish", self.workers)
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.connections) >= self.workers,
                                  timeout=max(0.0, self.connect_deadline - time.monotonic()))
            connections = list(self.connections)
        self.listener.close()
        done = 0
        for connection in connections:
            try:
                done += read_line(connection, limit=64) + b"\n" == DONE
            except OSError:
                pass  # that host failed or vanished: nothing to wait for
        # Only now, with every host done: closing releases them all at once.
        for connection in connections:
            connection.close()
        log.info("%d of %d other host(s) finished: the job is over", done, self.workers)
        return done


class FinishLineWorker:
    """A worker host's side: connects to the first host in the background while it works."""

    def __init__(self, leader: str, port: int, wait_s: float):
        self.connection: socket.socket | None = None
        self.thread = threading.Thread(target=self._connect, args=(leader, port, wait_s),
                                       name="finish-line", daemon=True)
        self.thread.start()

    def _connect(self, leader: str, port: int, wait_s: float) -> None:
        try:
            self.connection = connect_with_retry(leader, port, wait_s)
            keep_alive(self.connection)
        except (TimeoutError, OSError) as error:
            log.warning("cannot reach the first host to end the job together (%s): "
                        "this host will exit when its own work ends", error)

    def cross(self) -> None:
        """Say done, then wait until the first host closes (every host is done)."""
        log.info("waiting for the first host to end the job")
        self.thread.join()
        if self.connection is None:
            return
        try:
            self.connection.sendall(DONE)
        except OSError:
            self.connection.close()
            return
        wait_for_leader_to_finish(self.connection)
