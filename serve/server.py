"""Run TorchServe and our front door (serve/front.py) and watch them: wait for
the model to load, exit if it cannot, drain on SIGTERM.

TorchServe 0.12 facts this works around:
- a worker whose model fails to load is restarted with back-off for ever, and
  /ping answers 200 meanwhile: the handler writes a marker file on a failed
  load and we stop the server, so the container exits non-zero with the reason;
- `torchserve --foreground` is a Python launcher whose java child it neither
  signals nor reports the status of: we signal java ourselves;
- on SIGTERM java closes its listeners, then gives open connections a 2 s quiet
  period: a request still in a worker after that is dropped. So we first wait
  until no request is queued or being handled, with /ping answering 503
  ("Draining", our Ping plugin reads the marker file) so that load balancers
  and clients stop sending;
- TorchServe keeps accepting requests while we drain: under load that never
  stops, the drain ends at the grace period less the time java needs to stop,
  so that the container is gone within BYOC_SERVE_GRACE_PERIOD in all;
- the front door stops last: a request that reaches it after TorchServe has
  closed gets a 503 with a JSON reason instead of a reset connection.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import psutil

from serve.config import MODEL_NAME, ServeConfig

logger = logging.getLogger(__name__)

JAVA_STOP_S = 4.0  # seconds kept back from the grace period for java to stop


class Server:
    def __init__(self, cfg: ServeConfig, workdir: str, config_path: str, log_config: str, store: str):
        self.cfg = cfg
        self.workdir = workdir
        self.status_dir = os.path.join(workdir, "status")
        self.cmd = [
            sys.executable, "-m", "ts.model_server", "--foreground",
            "--ts-config", config_path, "--model-store", store,
            "--log-config", log_config, "--disable-token-auth", "--ncs",
        ]
        self.proc: subprocess.Popen | None = None
        self.front: subprocess.Popen | None = None
        self.stopping = threading.Event()

    # ------------------------------------------------------------ process
    def env(self) -> dict:
        tmp = os.path.join(self.workdir, "tmp")
        env = dict(os.environ)
        env.update(self.cfg.worker_env())
        env.update(
            {
                # The launcher keeps its pid file in the temp dir, java its
                # model links: keep both in our work dir (several servers per host).
                "TMPDIR": tmp, "TEMP": tmp,
                "LOG_LOCATION": os.path.join(self.workdir, "logs"),
                "METRICS_LOCATION": os.path.join(self.workdir, "logs"),
                "BYOC_SERVE_STATUS_DIR": self.status_dir,
            }
        )
        return env

    def start(self) -> None:
        for sub in ("tmp", "logs", "status"):
            os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)
        logger.info("starting TorchServe: %s", " ".join(self.cmd))
        # Own session: a Ctrl-C in a terminal reaches us only, and we decide
        # what TorchServe gets and when.
        self.proc = subprocess.Popen(self.cmd, env=self.env(), cwd=self.workdir, start_new_session=True)
        # Up at once: until TorchServe answers, /ping gets 503 from the front.
        self.front = subprocess.Popen([sys.executable, *self.cfg.front_command()], cwd=self.workdir,
                                      start_new_session=True)

    def exited(self) -> str | None:
        """Which of our two processes has exited, with its status."""
        for name, proc in (("TorchServe", self.proc), ("the front door", self.front)):
            if proc is not None and proc.poll() is not None:
                return f"{name} exited (status {proc.returncode})"
        return None

    def java(self) -> psutil.Process | None:
        try:
            for child in psutil.Process(self.proc.pid).children():
                if "java" in os.path.basename(child.exe() or child.name()):
                    return child
        except psutil.Error:
            pass
        return None

    # ------------------------------------------------------------ status
    def describe(self) -> list | None:
        url = f"http://127.0.0.1:{self.cfg.management_port}/models/{MODEL_NAME}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.load(resp)
        except Exception:
            return None

    def ready_workers(self) -> int:
        info = self.describe()
        if not info:
            return 0
        return sum(w.get("status") == "READY" for w in info[0].get("workers", []))

    def pending(self) -> int:
        info = self.describe()
        if not info:
            return 0
        return int(info[0].get("jobQueueStatus", {}).get("pendingRequests", 0))

    def load_failure(self) -> str | None:
        for path in sorted(glob.glob(os.path.join(self.status_dir, "load-failed-*.json"))):
            try:
                with open(path) as f:
                    info = json.load(f)
                return f"{info.get('error')}: {info.get('message')}"
            except (OSError, ValueError):
                return "a worker failed to load the model"
        return None

    def busy(self) -> bool:
        return bool(glob.glob(os.path.join(self.status_dir, "busy-*")))

    # ------------------------------------------------------------ lifecycle
    def wait_ready(self) -> int | None:
        """None once all workers are READY; an exit status if we must stop."""
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        delay = 0.2
        while not self.stopping.is_set():
            gone = self.exited()
            if gone:
                logger.error("%s during startup", gone)
                return 1
            reason = self.load_failure()
            if reason:
                logger.error("the model failed to load: %s", reason)
                return 1
            if self.ready_workers() >= self.cfg.workers:
                logger.info("model loaded, %d worker(s) ready: serving on port %d", self.cfg.workers, self.cfg.port)
                return None
            if time.monotonic() > deadline:
                logger.error("the model was not ready after %d s (BYOC_SERVE_STARTUP_TIMEOUT)", self.cfg.startup_timeout_s)
                return 1
            self.stopping.wait(delay)
            delay = min(delay * 1.5, 2.0)
        return None

    def watch(self) -> int | None:
        """Serve until a signal (None) or until TorchServe fails (exit status)."""
        while not self.stopping.wait(0.5):
            gone = self.exited()
            if gone:
                logger.error("%s unexpectedly", gone)
                return 1
            reason = self.load_failure()
            if reason:
                logger.error("a restarted worker failed to load the model: %s", reason)
                return 1
        return None

    def drain(self, deadline: float) -> None:
        """Wait until no request is queued or in a worker, twice in a row."""
        quiet, start = 0, time.monotonic()
        logger.info("draining: waiting for queued and running requests (up to %.0f s)", deadline - start)
        while time.monotonic() < deadline and self.proc.poll() is None:
            quiet = quiet + 1 if (not self.busy() and self.pending() == 0) else 0
            if quiet >= 2:
                logger.info("drained: no request queued or running after %.1f s", time.monotonic() - start)
                return
            time.sleep(0.1)
        logger.warning("drain: requests still in flight at the end of the grace period")

    def stop(self, drain: bool) -> None:
        self.stop_torchserve(drain)
        self.stop_front()

    def stop_front(self) -> None:
        if self.front is None or self.front.poll() is not None:
            return
        self.front.send_signal(signal.SIGTERM)
        try:
            self.front.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.front.kill()
            self.front.wait()

    def stop_torchserve(self, drain: bool) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        deadline = time.monotonic() + self.cfg.grace_period_s
        if drain:
            self.mark_draining()
            # java needs ~2 s (its quiet period) to stop after the drain
            self.drain(deadline - min(JAVA_STOP_S, self.cfg.grace_period_s / 2))
        java = self.java()
        logger.info("stopping TorchServe")
        try:
            (java.send_signal if java else self.proc.send_signal)(signal.SIGTERM)
        except (psutil.Error, ProcessLookupError):
            pass
        try:
            self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("TorchServe did not stop in time: killing it")
        self.kill_group()

    def mark_draining(self) -> None:
        """/ping answers 503 from now on (docker/serve/plugins Ping.java)."""
        try:
            with open(os.path.join(self.status_dir, "draining"), "w"):
                pass
        except OSError as exc:
            logger.warning("could not mark the server as draining: %s", exc)

    def kill_group(self) -> None:
        """Whatever is left of TorchServe's session (java, workers) goes."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
