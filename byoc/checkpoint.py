"""Spot-safe checkpoints: atomic save, keep the last K, resume, SIGTERM hook.

Used by the built-in trainer and importable from users' own scripts::

    from byoc.checkpoint import Checkpointer, TerminationFlag, capture_state, restore_state

    ckpt = Checkpointer(every_steps=500, every_seconds=600)        # rank 0: enabled=True
    stop = TerminationFlag().install()                             # SIGTERM -> flag only
    state = ckpt.load_latest()
    pos = restore_state(state, model, optimizer, scheduler=sched) if state else {"epoch": 0, "step": 0}
    for epoch in range(pos["epoch"], epochs):
        for step, batch in enumerate(batches(epoch, skip=pos["step"]), start=pos["step"]):
            ...train one step...
            if stop.requested or ckpt.due(global_step):
                ckpt.save(capture_state(model, optimizer, scheduler=sched,
                                        epoch=epoch, step=step + 1), global_step)
            if stop.requested:
                sys.exit(143)          # 128 + SIGTERM: interrupted, not finished
        pos["step"] = 0

Where checkpoints go (``default_checkpoint_dir``, the rule is ``byoc.layout.checkpoint_dir``):
``$SM_CHECKPOINT_DIR`` if set, else ``<root>/checkpoints`` with ``<root>`` = ``$BYOC_ML_ROOT``
(when not empty) or ``/opt/ml``. SageMaker
itself exports no variable for this path: the SDK's ``checkpoint_local_path`` defaults to
``/opt/ml/checkpoints``, which it syncs to ``checkpoint_s3_uri`` while the job runs and
restores into the container when a (spot) job restarts. A job that changed
``checkpoint_local_path`` passes the new path in ``SM_CHECKPOINT_DIR`` (the name several
SageMaker examples already use for it).

Why each step is done as it is:

- Atomic: the state is written to a temp file in the same directory, flushed and
  fsync'ed, then ``os.replace``'d over the final name and the directory fsync'ed. A kill
  (even -9) during the write leaves at most a stray temp file, never a half file under a
  checkpoint name; the previous checkpoint stays loadable.
- ``load_latest`` still tries the newest file first and falls back to older ones when a
  file does not load (truncated by a full disk or a partial S3 sync).
- Everything is stored as tensors and plain Python types so ``torch.load(...,
  weights_only=True)`` loads it: no pickled code runs when a checkpoint is read.
- The signal handler only sets a flag: saving from inside a handler could interrupt a
  half-done optimizer step or a collective. The loop checks the flag at step boundaries
  (SageMaker gives 120 s between SIGTERM and SIGKILL).
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from byoc import layout

__all__ = [
    "Checkpointer",
    "TerminationFlag",
    "atomic_save",
    "capture_rng_state",
    "restore_rng_state",
    "capture_state",
    "restore_state",
    "default_checkpoint_dir",
    "unwrap_model",
]

log = logging.getLogger(__name__)

INTERRUPTED_EXIT_CODE = 143  # 128 + SIGTERM: the conventional status of a TERM'ed process


def default_checkpoint_dir() -> Path:
    """``$SM_CHECKPOINT_DIR``, else ``<$BYOC_ML_ROOT or /opt/ml>/checkpoints`` (see module doc)."""
    return layout.checkpoint_dir()


# ----------------------------------------------------------------------------- atomic write


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)   # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would, so
        # that another user (the serving image's non-root user) can read it.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


# ----------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict:
    """Python, NumPy (legacy global), torch CPU and CUDA generator states, as tensors."""
    py_version, py_internal, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return {
        "python_version": int(py_version),
        "python": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": py_gauss,
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def restore_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
         state["numpy_has_gauss"], state["numpy_gauss"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("checkpoint has CUDA RNG states for %d devices, this host has %d: not restored",
                        len(cuda), torch.cuda.device_count())


# ----------------------------------------------------------------------------- training state


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def capture_state(model, optimizer=None, scheduler=None, scaler=None, *, epoch: int, step: int,
                  global_step: int | None = None, rng: dict | None = None, **extra) -> dict:
    """Everything needed to continue a run exactly where it stands.

    ``epoch`` is the epoch in progress and ``step`` the number of batches of it already
    done (``step == 0``: the epoch starts from its first batch). ``extra`` holds plain
    types or tensors (metric history, ...). ``rng`` defaults to this process's RNG states.
    """
    state = {
        "format": "pytorch-byoc-checkpoint/1",
        "epoch": int(epoch),
        "step": int(step),
        "global_step": int(global_step if global_step is not None else step),
        "model": unwrap_model(model).state_dict(),
        "rng": rng if rng is not None else capture_rng_state(),
        "time": time.time(),
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    state["extra"] = extra
    return state


def restore_state(state: dict, model, optimizer=None, scheduler=None, scaler=None, *,
                  rng: bool = True) -> dict:
    """Load ``capture_state`` output back; returns ``{"epoch", "step", "global_step", "extra"}``."""
    unwrap_model(model).load_state_dict(state["model"])
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    if rng and isinstance(state.get("rng"), dict):
        restore_rng_state(state["rng"])
    return {"epoch": state["epoch"], "step": state["step"],
            "global_step": state.get("global_step", state["step"]), "extra": state.get("extra", {})}


# ----------------------------------------------------------------------------- checkpointer


class Checkpointer:
    """Numbered checkpoints ``<prefix>-<global step>.pt`` in one directory.

    ``enabled=False`` (ranks other than 0) keeps the same timers but writes nothing, so
    every rank can call the same methods. ``every_steps`` / ``every_seconds``: 0 is off.
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, keep_last: int = 2,
                 every_steps: int = 0, every_seconds: float = 0.0, enabled: bool = True,
                 prefix: str = "checkpoint"):
        if keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
            raise ValueError(f"bad checkpoint prefix {prefix!r}")
        self.directory = Path(directory) if directory is not None else default_checkpoint_dir()
        self.keep_last = keep_last
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.enabled = enabled
        self.prefix = prefix
        self._pattern = re.compile(rf"{re.escape(prefix)}-(\d+)\.pt")
        self._last_step: int | None = None
        self._last_time = time.monotonic()

    # -- what is on disk

    def checkpoints(self) -> list[Path]:
        """Checkpoint files, oldest first (by the step in their name)."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            m = self._pattern.fullmatch(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def load_latest(self, map_location: Any = "cpu") -> dict | None:
        """The newest checkpoint that loads; unreadable ones are skipped with a warning."""
        for path in reversed(self.checkpoints()):
            try:
                state = torch.load(path, map_location=map_location, weights_only=True)
            except Exception as e:  # truncated zip, bad pickle, ... : try the one before
                log.warning("checkpoint %s is unreadable (%s: %s); trying the previous one",
                            path, type(e).__name__, str(e)[:200])
                continue
            if not isinstance(state, dict):
                log.warning("checkpoint %s holds a %s, not a dict; skipped", path, type(state).__name__)
                continue
            log.info("loaded checkpoint %s", path)
            state.setdefault("path", str(path))
            return state
        return None

    # -- when to save

    def due(self, global_step: int) -> bool:
        """True when ``every_steps`` steps or ``every_seconds`` seconds passed since the last save."""
        if self.every_steps and global_step - (self._last_step or 0) >= self.every_steps:
            return True
        return bool(self.every_seconds) and time.monotonic() - self._last_time >= self.every_seconds

    def mark_saved(self, global_step: int) -> None:
        self._last_step = global_step
        self._last_time = time.monotonic()

    # -- writing

    def save(self, state: dict, global_step: int) -> Path | None:
        """Write ``state`` atomically as the checkpoint of ``global_step``; drop old ones."""
        self.mark_saved(global_step)
        if not self.enabled:
            return None
        path = self.directory / f"{self.prefix}-{global_step:010d}.pt"
        atomic_save(state, path)
        self._prune()
        return path

    def _prune(self) -> None:
        for old in self.checkpoints()[:-self.keep_last]:
            old.unlink(missing_ok=True)
        # temp files of writes killed half-way (kill -9); ours only, and not brand new ones
        for tmp in self.directory.glob(f".{self.prefix}-*.pt.*.tmp"):
            try:
                if time.time() - tmp.stat().st_mtime > 60:
                    tmp.unlink()
            except FileNotFoundError:
                pass


# ----------------------------------------------------------------------------- SIGTERM hook


class TerminationFlag:
    """Turns SIGTERM (SageMaker spot interruption, job stop) into a flag the loop polls.

    The handler does nothing but record the signal; the loop saves a checkpoint at its next
    step boundary and exits. Use ``install()``/``uninstall()`` or ``with TerminationFlag() as
    stop:``. Must be installed from the main thread (a Python rule for signal handlers).
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM,)):
        self.signals = tuple(signals)
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Set the flag without a signal (e.g. another rank was told to stop)."""
        self.signum = signum

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def install(self) -> "TerminationFlag":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("TerminationFlag.install() must run in the main thread")
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def uninstall(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> "TerminationFlag":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()
