"""`serve`: the serving image's entry. Reads the settings, checks the model, installs its
code/requirements.txt, then runs the front door (serve/app.py) on the inference port with
the chosen engine behind it (BYOC_SERVING_ENGINE: python, the default, or torchserve).

Exit status: 0 after a SIGTERM/SIGINT stop (requests received before it are answered
first, within BYOC_SERVE_GRACE_PERIOD); 1 when the settings are invalid, there is no
model to load, it cannot load, or its code/requirements.txt cannot be installed (the
reason is the last line of the log); 2 for a bad command line.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
import tempfile

from byoc import artifact
from serve.config import MB, MODEL_NAME, ConfigError, ServeConfig

logger = logging.getLogger("serve")

MULTI_MODEL_ROOT = "/opt/ml/models"   # where SageMaker puts the models of a multi-model endpoint


class StartupError(Exception):
    """The server cannot start: the reason, for the last line of the log."""


def model_to_serve(cfg: ServeConfig) -> str:
    """The folder of the real-time model, checked before anything starts: it exists, can be
    read, and holds something to load (else StartupError with what it holds)."""
    try:
        root = artifact.model_root(cfg.model_dir)
        reason = artifact.nothing_to_load(root, cfg.program)
    except FileNotFoundError as exc:
        raise StartupError(f"{exc}: mount the model there, or set SM_MODEL_DIR") from None
    except PermissionError as exc:
        raise StartupError(f"the model directory cannot be read ({exc.strerror}): the server runs as "
                           "uid 1000, so its files must be readable by others") from None
    except ValueError as exc:   # several *.pt files and no model.pt
        raise StartupError(str(exc)) from None
    if reason:
        raise StartupError(f"{reason} ({cfg.model_dir})")
    return root


def make_engine(cfg: ServeConfig, workdir: str):
    if cfg.engine == "torchserve":
        from serve.torchserve.engine import TorchServeEngine

        return TorchServeEngine(cfg, workdir)
    from serve.pool import PythonEngine

    return PythonEngine(cfg, workdir, required_model=None if cfg.multi_model else MODEL_NAME)


def work_folder(cfg: ServeConfig) -> str:
    """BYOC_SERVE_WORKDIR (else a temporary folder), with its spool, checked writable now:
    StartupError with the reason rather than a traceback, or a failure at the first large body."""
    try:
        workdir = cfg.workdir or tempfile.mkdtemp(prefix="byoc-serve-")
        spool = os.path.join(workdir, "spool")
        os.makedirs(spool, exist_ok=True)
        tempfile.TemporaryFile(dir=spool).close()
    except OSError as exc:
        where = cfg.workdir or f"a temporary folder under {tempfile.gettempdir()}"
        raise StartupError(f"the work folder {where} cannot be used ({exc.strerror or exc}): "
                           "set BYOC_SERVE_WORKDIR to a writable folder") from None
    return workdir


async def run(cfg: ServeConfig) -> int:
    workdir = work_folder(cfg)
    model_dir = None if cfg.multi_model else model_to_serve(cfg)
    loop = asyncio.get_running_loop()
    stop, received, draining = asyncio.Event(), [], []

    def on_signal(sig):
        draining.append(True)   # /ping answers 503 from this moment, so that traffic goes elsewhere
        received.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    engine = make_engine(cfg, workdir)
    await engine.start()
    loading = None
    if model_dir is not None:   # the workers start first: a cold start waits for them, not for us
        loading = asyncio.ensure_future(engine.load(MODEL_NAME, model_dir, cfg.model_dir))
        loading.add_done_callback(_loaded)
    # the front door's libraries load in a thread meanwhile (aiohttp takes 0.4 s to import)
    await loop.run_in_executor(None, importlib.import_module, "serve.app")
    from aiohttp import web

    from serve.app import Front, make_app

    spool = os.path.join(workdir, "spool")
    front = Front(engine, max_body=cfg.max_payload_mb * MB, spool=spool, multi_model=cfg.multi_model,
                  model_root=MULTI_MODEL_ROOT, draining=draining)
    runner = web.AppRunner(make_app(front), access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    # until the model is loaded /ping answers 503, and requests wait for a worker
    await web.TCPSite(runner, "0.0.0.0", cfg.port).start()
    logger.info("front door on port %d, %s engine", cfg.port, engine.name)
    failed = asyncio.ensure_future(engine.failed())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    reason = failed.result() if failed.done() else None
    if reason is None:   # draining: what was received is answered
        logger.info("stopping on %s: answering the requests received (up to %d s)",
                    signal.Signals(received[0]).name, cfg.grace_period_s)
        # what is left after the drain: the engine's stop and closing the connections
        await engine.drain(loop.time() + max(0.0, cfg.grace_period_s - engine.stop_margin_s))
    for task in (failed, stopped, loading):
        if task is not None and not task.done():
            task.cancel()
    await engine.stop()
    await runner.cleanup()
    if reason is not None:
        # the last line, why the container stops: CRITICAL, which no log level hides
        logger.critical("%s", reason)
        return 1
    logger.info("stopped on %s", signal.Signals(received[0]).name)
    return 0


def _loaded(task: asyncio.Task) -> None:
    if task.cancelled() or task.exception() is not None:
        return   # the engine's failed() says why
    info = task.result()
    logger.info("model %s loaded, %d worker(s): serving", info.name, info.workers)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__ + "\nSettings come from the environment: see serve/config.py.")
        return 0
    if argv and argv[0] != "serve":  # SageMaker runs the image with the argument "serve"
        print(f"serve: unexpected arguments {argv}", file=sys.stderr)
        return 2
    try:
        cfg = ServeConfig.from_env()
    except ConfigError as exc:
        logging.basicConfig(level=logging.INFO)
        logger.error("invalid configuration: %s", exc)
        return 1
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s [%(levelname)s] %(name)s - %(message)s")
    logger.info("configuration: %s", cfg)
    try:
        return asyncio.run(run(cfg))
    except StartupError as exc:
        logger.critical("%s", exc)   # the last line, at a level no log level hides
        return 1


if __name__ == "__main__":
    sys.exit(main())
