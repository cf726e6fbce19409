"""The torchserve engine's config.properties, rendered from the serving contract
(serve/config.py's ServeConfig): one model, its workers, batch size and delay, the
timeouts and payload limits, every TorchServe port on 127.0.0.1 behind our front door."""
from __future__ import annotations

import json

from serve.config import MB, MODEL_NAME, MODEL_VERSION, ConfigError, ServeConfig

JVM_YOUNG_MB = 32  # the frontend's young generation (vmargs)


def jvm_heap_mb(cfg: ServeConfig) -> int:
    """BYOC_SERVE_JVM_HEAP_MB, else 1/8 of the container's memory, 256 MiB..4 GiB: the
    frontend only buffers requests and responses; the rest is left to the workers."""
    if cfg.jvm_heap_mb:
        return cfg.jvm_heap_mb
    if not cfg.memory_bytes:
        return 1024
    return int(min(4096, max(256, cfg.memory_bytes // 8 // MB)))


def backend_url(cfg: ServeConfig) -> str:
    """TorchServe's own inference API, which the front door relays to."""
    return f"http://127.0.0.1:{cfg.backend_port}"


def model_config(cfg: ServeConfig) -> dict:
    """Per-model settings: TorchServe reads batch size/delay only from here."""
    settings = {
        "defaultVersion": True,
        "marName": MODEL_NAME,
        "minWorkers": cfg.workers,
        "maxWorkers": cfg.workers,
        "batchSize": cfg.batch_size,
        "maxBatchDelay": cfg.max_batch_delay_ms,
        "responseTimeout": cfg.timeout_s,
        "startupTimeout": cfg.startup_timeout_s,
    }
    return {MODEL_NAME: {MODEL_VERSION: settings}}


def properties(cfg: ServeConfig, model_store: str) -> dict[str, str]:
    payload = str(cfg.max_payload_mb * MB)
    return {
        # Only our front door (serve/app.py) listens outside the container; it relays the
        # SageMaker routes here and answers /ping itself. Hence token authorization off.
        "inference_address": backend_url(cfg),
        "management_address": f"http://127.0.0.1:{cfg.management_port}",
        "metrics_address": f"http://127.0.0.1:{cfg.metrics_port}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": str(cfg.grpc_ports[0]),
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": str(cfg.grpc_ports[1]),
        "disable_token_authorization": "true",
        "enable_model_api": "false",
        "enable_metrics_api": "true",
        "metrics_mode": "prometheus",
        "model_store": model_store,
        "load_models": f"{MODEL_NAME}={MODEL_NAME}",
        "models": json.dumps(model_config(cfg), separators=(",", ":")),
        "default_workers_per_model": str(cfg.workers),
        "default_response_timeout": str(cfg.timeout_s),
        "default_startup_timeout": str(cfg.startup_timeout_s),
        "max_request_size": payload,
        "max_response_size": payload,
        # The handler needs the raw body bytes and the request's own
        # Content-Type; TorchServe would otherwise json.loads JSON bodies.
        "decode_input_request": "false",
        # Dependencies are installed by `serve`, never by TorchServe.
        "install_py_dep_per_model": "false",
        # Its periodic psutil subprocess costs CPU and nothing reads it.
        "disable_system_metrics": "true",
        # The serial collector with a small, fixed young generation: the frontend's garbage is
        # short-lived request buffers. With the default G1 the heap kept growing by 100+ MiB
        # over CI's 10k-request load test (flat with this: +17 MiB; bench/README.md).
        "vmargs": (f"-Xmx{jvm_heap_mb(cfg)}m -XX:+UseSerialGC -Xmn{JVM_YOUNG_MB}m "
                   "-XX:+UseContainerSupport -XX:+ExitOnOutOfMemoryError"),
    }


def render(cfg: ServeConfig, model_store: str) -> str:
    """config.properties text: one 'key=value' per line, newline-terminated."""
    lines = [f"{k}={_escape(v)}" for k, v in properties(cfg, model_store).items()]
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    # java.util.Properties treats backslash as an escape; nothing else in our
    # values (':', '"', '{') needs escaping on the value side.
    return value.replace("\\", "\\\\")


def parse_properties(text: str) -> dict[str, str]:
    """Minimal java.util.Properties reader for one-line entries (tests, logs)."""
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", "!")):
            continue
        if "=" not in line:
            raise ConfigError(f"config line without '=': {line!r}")
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip().replace("\\\\", "\\")
    return out
