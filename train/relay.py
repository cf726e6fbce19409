"""Running the training command: its own process group, stop signals relayed, stderr kept.

Ours, not sagemaker-training's: that one forwards no SIGTERM to the script, busy-waits for
MPI workers, and loses the error message. Here the child runs in its own process group,
SIGTERM/SIGINT/SIGHUP are relayed to the whole group, SIGKILL follows after a grace period,
and the end of the child's stderr is kept for the failure file while it streams to ours.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("train")


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
