"""`serve`: write TorchServe's config, start it, relay signals, exit with a status.

Exit status: 0 after a SIGTERM/SIGINT stop; 1 if the model cannot load, the
configuration is invalid, or TorchServe dies; 2 for a bad command line.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile

from serve import logconfig, modelstore, requirements
from serve.config import ConfigError, ServeConfig
from serve.server import Server

logger = logging.getLogger("serve")


def prepare(cfg: ServeConfig) -> Server:
    """Work dir, code/requirements.txt (if allowed), model store (links, no copy), config.properties, log4j2.xml."""
    workdir = cfg.workdir or tempfile.mkdtemp(prefix="byoc-serve-")
    os.makedirs(workdir, exist_ok=True)
    site = requirements.install(cfg.model_dir, workdir, cfg.install_requirements)
    if site:  # the workers inherit our environment (Server.env)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)
    store = os.path.join(workdir, "model-store")
    os.makedirs(store, exist_ok=True)
    modelstore.build(cfg.model_dir, store)
    config_path = os.path.join(workdir, "config.properties")
    with open(config_path, "w") as f:
        f.write(cfg.render(store))
    log_config = os.path.join(workdir, "log4j2.xml")
    with open(log_config, "w") as f:
        f.write(logconfig.render(cfg.log_level))
    return Server(cfg, workdir, config_path, log_config, store)


def run(cfg: ServeConfig) -> int:
    server = prepare(cfg)
    received = []

    def on_signal(signum, _frame):
        received.append(signum)
        server.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    try:
        status = server.wait_ready()
        if status is None:
            status = server.watch()
    finally:
        server.stop(drain=bool(received))
    if received:
        logger.info("stopped on %s", signal.Signals(received[0]).name)
        return 0
    return status or 0


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
        return run(cfg)
    except (FileNotFoundError, requirements.RequirementsError) as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
