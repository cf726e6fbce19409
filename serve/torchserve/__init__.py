"""The torchserve engine (``BYOC_SERVING_ENGINE=torchserve``): TorchServe 0.12 behind our
front door, everything TorchServe-specific in this package: its config.properties and log
configuration (config.py, logconfig.py), its model store (modelstore.py), its Java
frontend's process and readiness (engine.py), and the handler entry its Python workers
call (entry.py).

TorchServe was archived upstream on 2025-08-07 (0.12.0 is its last release, 2024-09): no
fix will come, so it is kept for users who ask for it, for real-time hosting only, and
the python engine (serve/pool.py) is the default.
"""
