"""MPI start: the worker hosts and the leader meet on the job's sync port.

The leader (the first host) runs mpirun, which reaches every worker host over ssh. Each
worker host connects to the leader, receives the job's public key, authorizes it, starts
sshd and says "ready"; it then holds the connection until the leader closes it (the job is
over). The leader starts mpirun once every worker host is ready.

The ssh key mpirun uses is made per job by the leader and handed to the workers over the
sync connection, so no key is baked into the image. The trade-off: a worker trusts the key
that the host named as the job's first host sends it; that host name resolves only inside
the job's own network.
"""

from __future__ import annotations

import logging
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from train.relay import send_to_group
from train.sync import connect_with_retry, keep_alive, read_line, wait_for_leader_to_finish

log = logging.getLogger("train")


class Stopped(Exception):
    """A stop signal arrived while waiting."""


def raise_stopped(signum, frame):
    raise Stopped(signal.Signals(signum).name)


READY = b"ready\n"  # a worker host's sshd accepts connections


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
