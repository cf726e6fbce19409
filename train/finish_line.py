"""Ending a multi-host job together, on the job's sync port.

SageMaker ends a job once every host's container has exited. Local mode's
`docker compose up --abort-on-container-exit` stops every host as soon as the first one
exits, cutting short the hosts still at work: a per-host job whose hosts take different
times lost the slower hosts' output, a torchrun host still shutting down exited 143. So the
hosts of a multi-host job (but MPI's, whose worker hosts already wait for the leader, see
train.rendezvous) end together: each worker host holds a connection to the first host while
it works, says "done" at its end, and exits when the first host closes; the first host
closes once every worker host has said so or gone. A host whose work failed does not wait:
the job has failed.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from train.sync import connect_with_retry, keep_alive, read_line, wait_for_leader_to_finish

log = logging.getLogger("train")

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
