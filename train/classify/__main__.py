"""``python -m train.classify [--name value ...]``: the built-in trainer's entry point."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if rank == 0 else logging.WARNING
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    logging.basicConfig(level=level, stream=sys.stdout, force=True,
                        format=f"%(asctime)s %(levelname)s {prefix}%(message)s")


def main(argv=None) -> int:
    from .config import UsageError, build_parser, parse_args

    args = parse_args(argv)  # exits 2 on a bad value, before anything heavy is imported
    setup_logging()
    from . import engine

    try:
        return engine.run(args)
    except UsageError as e:
        build_parser().exit(2, f"{build_parser().prog}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
