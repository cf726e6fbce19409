"""The job's sync port: one TCP connection from each worker host to the first host.

Two hand-offs use it, one at a time: at the start of an MPI job, train.rendezvous (the
leader hands each worker host the job's ssh key and waits for its sshd); at the end of any
other multi-host job, train.finish_line (the hosts end together). A worker host knows the
job is over when the first host closes its connection.
"""

from __future__ import annotations

import socket
import time


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


def read_line(connection: socket.socket, limit: int = 16384) -> bytes:
    """One newline-terminated line from a blocking socket (the peer's whole message)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(limit - len(data))
        if not chunk or len(data) + len(chunk) >= limit:
            raise ConnectionError("the other host closed the connection or sent too much")
        data += chunk
    return data.strip()
