"""The serving contract: SAGEMAKER_* environment -> one validated, frozen object.

Read once at start (``ServeConfig.from_env()``), like the SageMaker toolkits'
environment module; bad values fail fast with the variable's name.

Environment (SageMaker's names where one exists):

SAGEMAKER_BIND_TO_PORT          inference port (default 8080), on 0.0.0.0: our front door
                                (serve/app.py), the only port open to the outside
SAGEMAKER_MULTI_MODEL           true/false: a multi-model endpoint (models loaded on demand through
                                the /models API, under /opt/ml/models; default false)
SAGEMAKER_BATCH                 true/false: SageMaker sets it in a Batch Transform job's containers;
                                checked and logged, the serving is the same
SAGEMAKER_BATCH_STRATEGY        SINGLE_RECORD|MULTI_RECORD: the job's strategy, as SageMaker sets it
                                (default MULTI_RECORD); /execution-parameters reports it
BYOC_SERVING_ENGINE             python|torchserve: what runs the models behind the front door
                                (default python, serve/pool.py; torchserve: TorchServe 0.12,
                                archived upstream, real-time hosting only; serve/engine.py)
SAGEMAKER_SAFE_PORT_RANGE       "lo-hi": the torchserve engine's management, metrics, gRPC and own
                                inference ports are lo..lo+4 (default 8081, 8082, 7070, 7071,
                                8083); all on 127.0.0.1 only
SAGEMAKER_MODEL_SERVER_WORKERS  workers (default: GPU_WORKERS_PER_GPU per GPU, else one per CPU core
                                of the cgroup's quota, as many as the container's memory holds;
                                on a multi-model endpoint, per model: default 1; at most 1024)
SAGEMAKER_TS_BATCH_SIZE         max requests per batch (default GPU_BATCH_SIZE on a GPU host, else
                                CPU_BATCH_SIZE)
SAGEMAKER_TS_MAX_BATCH_DELAY    ms to wait to fill a batch (default GPU_MAX_BATCH_DELAY_MS on a GPU
                                host, else CPU_MAX_BATCH_DELAY_MS; at most 60000)
SAGEMAKER_MODEL_SERVER_TIMEOUT  seconds per request to the worker (default 60, at most 3600)
SAGEMAKER_MAX_PAYLOAD_IN_MB     request and response size limit (default 6, at most 1024; 0, as a
                                Batch Transform job's MaxPayloadInMB of 0 sets it: 1024)
SAGEMAKER_CONTAINER_LOG_LEVEL   0..50 or DEBUG/INFO/... (default INFO)
SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT  the answer's type for a request with no Accept (or */*), as
                                SageMaker's toolkit (default: JSON; JSON lines for JSON lines)
SAGEMAKER_PROGRAM               user handler file in <model>/code (default inference.py; of a full path,
                                as SDK v2's local mode sets it, the file name)
SM_MODEL_DIR                    model directory (default /opt/ml/model)
BYOC_SERVE_WORKDIR              writable dir for installed requirements, spooled bodies and the
                                torchserve engine's files (default: a new temp dir)
BYOC_SERVE_STARTUP_TIMEOUT      s to wait for the model to load (default 600, at most 3600)
BYOC_SERVE_GRACE_PERIOD         s to drain after SIGTERM before a hard stop (default 25, at most 3600)
BYOC_SERVE_JVM_HEAP_MB          the torchserve engine's Java heap (default: from the container's
                                memory limit)
OMP_NUM_THREADS                 torch threads per worker (default on GPU: cpus // workers; on
                                CPU: adaptive, the cores shared among the workers busy at that
                                moment: a lone request gets every core, a full server one each)
OMP_WAIT_POLICY                 OpenMP's idle threads (default with adaptive threads: PASSIVE, they
                                sleep: spinning ones stall a worker whose core another one took)
GOMP_SPINCOUNT                  how long they spin first (default with adaptive threads and no
                                OMP_WAIT_POLICY of the user's: 10000, about 0.1 ms: through the
                                gaps between one forward's ops, asleep before another worker needs
                                the core)
MALLOC_MMAP_THRESHOLD_          glibc malloc: the size from which an allocation gets its own mapping
                                (default 268435456: tensors come from the heap and stay there)
MALLOC_TRIM_THRESHOLD_          glibc malloc: free memory kept at the top of the heap (default
                                536870912); with glibc's own defaults, freed activations went back
                                to the kernel and were faulted in again on every forward (2,200-3,100
                                page faults per request, EfficientNet-Lite0; bench/README.md)
BYOC_INSTALL_REQUIREMENTS       true/false: pip install code/requirements.txt at start (default true, as
                                SageMaker's PyTorch toolkit does; offline from code/wheelhouse/ when there)
BYOC_TOPK                       classes listed per prediction by the default handlers (default 5)
BYOC_MAX_INSTANCES              images per array request to the default handlers (default 64)
BYOC_MAX_IMAGE_PIXELS           largest image (width x height) decoded, by our decoders and by PIL
                                inside user code (default 40000000); larger ones get a 413
BYOC_GPU_DECODE                 auto|on|off: the default image handlers decode a batch's JPEGs with
                                nvjpeg and resize them on the device (default auto: on GPU workers)
BYOC_SERVE_AMP                  auto|bf16|fp16|off: the default handlers' autocast (default auto: bf16
                                on a GPU that has it, else fp16; off on CPU); handlers/gpu_batch.py
BYOC_OPTIMIZE_MODEL             true/false: run a torch.nn.Module from model_fn through a frozen
                                graph (torch.jit.freeze) where it is proven, on distinct inputs, to
                                give the model's own answers and is faster (default true;
                                serve/optimize.py)
BYOC_MERGE_CALLS                auto|on|off: merge the model calls of one batch's predict_fn calls
                                into one batch (default auto: only for batch sizes proven, on
                                distinct inputs, to give every input its answer alone; on: without
                                that proof; off: never, and predict_fn calls run one after another)

Every variable is checked when `serve` starts: a bad value stops the container with
the variable's name and the reason. The workers get the checked values (worker_env)
and read them once (WorkerSettings).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from dataclasses import dataclass
from typing import Mapping

from byoc.devices import gpu_count

MODEL_NAME = "model"
MODEL_VERSION = "1.0"
MB = 1024 * 1024

# Defaults on a GPU host, where the default handlers decode a batch of JPEGs with nvjpeg and run
# bf16 (issue 10). TO BE MEASURED: the issue asks for values that fill the GPU, chosen by
# measurement (bench/gpu_serve.py sweeps the batch size); no GPU was available when these were
# set, so they are conservative: one worker per GPU as before, batches of up to 32 requests, and
# a 5 ms wait, which bounds what a lone request pays for batching.
GPU_WORKERS_PER_GPU = 1
# Upper bounds: a typo (100000 for 1000) is refused at start, not found an hour into a request;
# all stay well inside the Java ints of TorchServe's config. 3600 s is asynchronous inference's
# longest request.
MAX_SECONDS = 3600
MAX_WORKERS = 1024
# SAGEMAKER_MAX_PAYLOAD_IN_MB=0 is what a Batch Transform job with MaxPayloadInMB=0 (a payload
# of any size) sets: the most we take (bodies over 8 MiB are spooled to disk, not held)
ANY_PAYLOAD_MB = 1024
GPU_BATCH_SIZE = 32
GPU_MAX_BATCH_DELAY_MS = 5

# glibc malloc for the workers (issue 11, bench/README.md): allocations up to 256 MiB come from
# the heap, and up to 512 MiB of free heap is kept, so a forward reuses the last one's pages
# instead of faulting in new ones. A value the user sets wins.
MALLOC_DEFAULTS = {"MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "536870912"}

# Defaults on a CPU host (issue 11, bench/README.md). Under load a worker takes up to 4 queued
# requests at once: one round trip to TorchServe's frontend instead of four, and the model calls
# of their predict_fn calls run as one batch (serve/optimize.py). A lone request waits at most
# 1 ms for company. (TorchServe 0.12 cannot be told "take what is queued, do not wait": a delay
# of 0 held a lone request for about 140 ms here.)
CPU_BATCH_SIZE = 4
CPU_MAX_BATCH_DELAY_MS = 1


class ConfigError(ValueError):
    """A serving setting from the environment is invalid."""


# ---------------------------------------------------------------- env parsing
def _int(env: Mapping[str, str], name: str, default: int, lo: int = 1, hi: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an integer") from None
    if value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{name}={raw!r}: must be {bounds}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first is the default)."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return choices[0]
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r}: use one of {', '.join(choices)}")
    return raw


def _gomp_spincount(env: Mapping[str, str], adaptive: bool) -> str:
    """The user's GOMP_SPINCOUNT; else 10000 with adaptive threads unless the user chose an
    OMP_WAIT_POLICY (it sets libgomp's spin itself); else none ("")."""
    if env.get("GOMP_SPINCOUNT", "").strip():
        return str(_int(env, "GOMP_SPINCOUNT", 0, lo=0))
    return "10000" if adaptive and not env.get("OMP_WAIT_POLICY", "").strip() else ""


def _media_type(env: Mapping[str, str], name: str) -> str:
    """A concrete media type (type/subtype, no wildcard, no parameters), or ""."""
    raw = env.get(name, "").strip()
    if not raw:
        return ""
    kind, _, sub = raw.lower().partition("/")
    if not kind or not sub or "*" in raw or any(c in raw for c in ",; "):
        raise ConfigError(f"{name}={raw!r}: expected one media type such as application/json")
    return raw.lower()


def _log_level(env: Mapping[str, str]) -> int:
    raw = env.get("SAGEMAKER_CONTAINER_LOG_LEVEL", "").strip()
    if not raw:
        return logging.INFO
    # isdigit() alone takes "²", which int() refuses; above CRITICAL (50) even the last line,
    # why the server stops, would be hidden
    level = int(raw) if raw.isascii() and raw.isdigit() else logging.getLevelName(raw.upper())
    if not isinstance(level, int) or not 0 <= level <= logging.CRITICAL:
        raise ConfigError(
            f"SAGEMAKER_CONTAINER_LOG_LEVEL={raw!r}: use 0..50 or DEBUG/INFO/WARNING/ERROR/CRITICAL"
        )
    return level


def _port_range(env: Mapping[str, str]) -> tuple[int, int, int, int, int]:
    """Management, metrics, gRPC inference, gRPC management and TorchServe's own
    inference ports (all on 127.0.0.1; TorchServe 0.12 cannot turn gRPC off).
    SageMaker reserves SAGEMAKER_SAFE_PORT_RANGE for a container's internal use:
    take them from there when it is set, else TorchServe's usual ports and 8083."""
    raw = env.get("SAGEMAKER_SAFE_PORT_RANGE", "").strip()
    if not raw:
        return 8081, 8082, 7070, 7071, 8083
    try:
        lo, hi = (int(x) for x in raw.split("-"))
    except ValueError:
        raise ConfigError(f"SAGEMAKER_SAFE_PORT_RANGE={raw!r}: expected 'low-high'") from None
    if not (1 <= lo and lo + 4 <= hi <= 65535):
        raise ConfigError(f"SAGEMAKER_SAFE_PORT_RANGE={raw!r}: need at least 5 ports in 1..65535")
    return lo, lo + 1, lo + 2, lo + 3, lo + 4


# ---------------------------------------------------------------- host probing
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_count() -> int:
    """CPUs this container may use: affinity mask, capped by a cgroup CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = None
    v2 = _read("/sys/fs/cgroup/cpu.max")  # "max 100000" or "200000 100000"
    if v2 and not v2.startswith("max"):
        q, p = v2.split()[:2]
        quota = int(q) / int(p)
    else:
        q, p = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if q and p and int(q) > 0:
            quota = int(q) / int(p)
    if quota:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def memory_limit() -> int | None:
    """Bytes of memory this container may use (cgroup v2, v1, else host RAM)."""
    limits = []
    v2 = _read("/sys/fs/cgroup/memory.max")
    if v2 and v2.isdigit():
        limits.append(int(v2))
    v1 = _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if v1 and v1.isdigit() and int(v1) < 1 << 60:  # "unlimited" is ~2**63
        limits.append(int(v1))
    meminfo = _read("/proc/meminfo") or ""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            limits.append(int(line.split()[1]) * 1024)
    return min(limits) if limits else None


def memory_in_use() -> int | None:
    """Bytes this container holds that the kernel cannot just drop: the cgroup's usage (v2, v1)
    less its file page cache, the part that processes map counted back in; else the host's used
    memory. The page cache must not count: a long-lived multi-model endpoint reads model files
    and libraries again and again, its cache grows towards the limit (the kernel drops it only
    under pressure), and counting it would refuse loads that fit (507)."""
    v2 = _read("/sys/fs/cgroup/memory.current")
    stat = _read("/sys/fs/cgroup/memory.stat") if v2 else _read("/sys/fs/cgroup/memory/memory.stat")
    usage = v2 or _read("/sys/fs/cgroup/memory/memory.usage_in_bytes")
    if usage and usage.isdigit() and stat:
        return held_memory(int(usage), stat)
    meminfo = dict(line.split(":", 1) for line in (_read("/proc/meminfo") or "").splitlines() if ":" in line)
    try:
        total, available = (int(meminfo[k].split()[0]) * 1024 for k in ("MemTotal", "MemAvailable"))
    except (KeyError, ValueError):
        return None
    return total - available


def held_memory(usage: int, stat: str) -> int:
    """``usage`` less the droppable page cache, from a cgroup's memory.stat (v1 or v2 names)."""
    fields = dict(line.split()[:2] for line in stat.splitlines() if len(line.split()) >= 2)

    def field(*names: str) -> int:
        return next((int(fields[n]) for n in names if fields.get(n, "").isdigit()), 0)
    cache = field("active_file", "total_active_file") + field("inactive_file", "total_inactive_file")
    mapped = field("file_mapped", "mapped_file", "total_mapped_file")
    return max(0, usage - cache + mapped)


# ---------------------------------------------------------------- the workers' share
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # a 40 MP photo; a 12000x12000 "bomb" is 144 MP
GPU_DECODE_CHOICES = ("auto", "on", "off")
SERVE_AMP_CHOICES = ("auto", "bf16", "fp16", "off")
MERGE_CHOICES = ("auto", "on", "off")   # serve/optimize.py
ENGINES = ("python", "torchserve")      # serve/engine.py
BATCH_STRATEGIES = ("multi_record", "single_record")   # SageMaker writes them in capitals


@dataclass(frozen=True)
class WorkerSettings:
    """What a TorchServe worker (serve/handler.py, the default handlers) applies.

    `serve` checks these at start as part of ServeConfig and passes them on in
    the workers' environment (``env()``); each worker reads them once
    (:func:`worker_settings`)."""

    topk: int = 5
    max_instances: int = 64
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    threads: int = 0  # torch intra-op threads; 0: adaptive (cpus // workers busy now)
    cpus: int = 1
    program: str = "inference.py"
    optimize_model: bool = True
    merge_calls: str = "auto"  # serve/optimize.py: MERGE_CHOICES
    log_level: int = logging.INFO
    status_dir: str | None = None  # set by serve.server: busy / load-failed marker files
    gpu_decode: str = "auto"  # handlers/gpu_batch.py: DECODE_CHOICES
    serve_amp: str = "auto"  # handlers/gpu_batch.py: AMP_CHOICES
    default_accept: str = ""  # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT; "": JSON (JSON lines for JSON lines)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "WorkerSettings":
        """BYOC_WORKER_THREADS / BYOC_WORKER_CPUS / BYOC_SERVE_STATUS_DIR are not
        settings: `serve` works them out and sets them for its workers."""
        env = os.environ if environ is None else environ
        return cls(
            topk=_int(env, "BYOC_TOPK", 5, hi=1_000_000),
            max_instances=_int(env, "BYOC_MAX_INSTANCES", 64, hi=1_000_000),
            max_image_pixels=_int(env, "BYOC_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS, hi=2**40),
            threads=_int(env, "BYOC_WORKER_THREADS", 0, lo=0),
            cpus=_int(env, "BYOC_WORKER_CPUS", os.cpu_count() or 1),
            program=_program(env),
            optimize_model=_bool(env, "BYOC_OPTIMIZE_MODEL", True),
            merge_calls=_choice(env, "BYOC_MERGE_CALLS", MERGE_CHOICES),
            log_level=_log_level(env),
            status_dir=env.get("BYOC_SERVE_STATUS_DIR", "").strip() or None,
            gpu_decode=_choice(env, "BYOC_GPU_DECODE", GPU_DECODE_CHOICES),
            serve_amp=_choice(env, "BYOC_SERVE_AMP", SERVE_AMP_CHOICES),
            default_accept=_media_type(env, "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"),
        )

    def env(self) -> dict[str, str]:
        """The same settings as environment variables, for the workers."""
        env = {
            "BYOC_TOPK": str(self.topk),
            "BYOC_MAX_INSTANCES": str(self.max_instances),
            "BYOC_MAX_IMAGE_PIXELS": str(self.max_image_pixels),
            "BYOC_WORKER_THREADS": str(self.threads),
            "BYOC_WORKER_CPUS": str(self.cpus),
            "SAGEMAKER_PROGRAM": self.program,
            "BYOC_OPTIMIZE_MODEL": str(self.optimize_model).lower(),
            "BYOC_MERGE_CALLS": self.merge_calls,
            "SAGEMAKER_CONTAINER_LOG_LEVEL": str(self.log_level),
            "BYOC_GPU_DECODE": self.gpu_decode,
            "BYOC_SERVE_AMP": self.serve_amp,
        }
        if self.default_accept:
            env["SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"] = self.default_accept
        if self.status_dir:
            env["BYOC_SERVE_STATUS_DIR"] = self.status_dir
        return env


@functools.lru_cache(maxsize=1)
def worker_settings() -> WorkerSettings:
    """This worker's settings, read once from the environment `serve` gave it
    (outside a server, e.g. a handler imported in a test: the defaults and any
    BYOC_* set). ``worker_settings.cache_clear()`` re-reads."""
    return WorkerSettings.from_env()


# ---------------------------------------------------------------- the object
@dataclass(frozen=True)
class ServeConfig:
    port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_ports: tuple = (7070, 7071)
    backend_port: int = 8083  # TorchServe's inference API, behind the front door
    workers: int = 1
    workers_set: bool = False  # SAGEMAKER_MODEL_SERVER_WORKERS given: no sizing from the memory
    model_workers: int = 1   # per model of a multi-model endpoint
    threads_per_worker: int = 1
    batch_size: int = 1
    max_batch_delay_ms: int = 100
    timeout_s: int = 60
    startup_timeout_s: int = 600
    grace_period_s: int = 25
    max_payload_mb: int = 6
    job_payload_mb: int = 6  # SAGEMAKER_MAX_PAYLOAD_IN_MB as set (0: any size), for /execution-parameters
    jvm_heap_mb: int = 0  # the torchserve engine's; 0: from memory_bytes
    model_dir: str = "/opt/ml/model"
    workdir: str | None = None
    gpus: int = 0
    cpus: int = 1
    memory_bytes: int | None = None  # the container's memory limit (cgroup), else the host's RAM
    engine: str = "python"
    multi_model: bool = False
    batch: bool = False  # a Batch Transform job (SAGEMAKER_BATCH)
    batch_strategy: str = "MULTI_RECORD"
    install_requirements: bool = True
    omp_wait_policy: str = ""
    gomp_spincount: str = ""
    malloc_env: tuple = ()  # (name, value) of the glibc malloc settings for the workers
    worker: WorkerSettings = WorkerSettings()

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        gpus: int | None = None,
        cpus: int | None = None,
        memory_bytes: int | None = None,
    ) -> "ServeConfig":
        env = os.environ if environ is None else environ
        gpus = gpu_count() if gpus is None else gpus
        cpus = cpu_count() if cpus is None else cpus
        internal = _port_range(env)
        mgmt, metrics, grpc_inf, grpc_mgmt, backend = internal
        port = _int(env, "SAGEMAKER_BIND_TO_PORT", 8080, hi=65535)
        if port in internal:
            raise ConfigError(
                f"SAGEMAKER_BIND_TO_PORT={port} collides with the internal ports "
                f"{'/'.join(map(str, internal))}"
            )
        # One worker per GPU. On CPU one per core: while one worker decodes an
        # image in Python (one core), another runs its forward pass. Their torch
        # threads adapt (serve/handler.py): a worker alone gets every core, and
        # under load each gets one, so workers x threads never exceeds the cores
        # (oversubscription is what sinks the AWS stack's defaults under load).
        workers = _int(env, "SAGEMAKER_MODEL_SERVER_WORKERS", gpus * GPU_WORKERS_PER_GPU or cpus, hi=MAX_WORKERS)
        adaptive = not gpus and not env.get("OMP_NUM_THREADS", "").strip()
        threads = cpus if adaptive else _int(env, "OMP_NUM_THREADS", max(1, cpus // workers))
        engine = _choice(env, "BYOC_SERVING_ENGINE", ENGINES)
        payload_mb = _int(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", 6, lo=0, hi=ANY_PAYLOAD_MB)
        multi_model = _bool(env, "SAGEMAKER_MULTI_MODEL", False)
        if multi_model and engine != "python":
            raise ConfigError(f"SAGEMAKER_MULTI_MODEL=true: the {engine} engine serves real-time endpoints "
                              "only; leave BYOC_SERVING_ENGINE unset (python) for a multi-model endpoint")
        return cls(
            port=port,
            management_port=mgmt,
            metrics_port=metrics,
            grpc_ports=(grpc_inf, grpc_mgmt),
            backend_port=backend,
            workers=workers,
            workers_set=bool(env.get("SAGEMAKER_MODEL_SERVER_WORKERS", "").strip()),
            model_workers=_int(env, "SAGEMAKER_MODEL_SERVER_WORKERS", 1, hi=MAX_WORKERS),
            threads_per_worker=threads,
            batch_size=_int(env, "SAGEMAKER_TS_BATCH_SIZE", GPU_BATCH_SIZE if gpus else CPU_BATCH_SIZE, hi=1024),
            max_batch_delay_ms=_int(env, "SAGEMAKER_TS_MAX_BATCH_DELAY",
                                    GPU_MAX_BATCH_DELAY_MS if gpus else CPU_MAX_BATCH_DELAY_MS, lo=0,
                                    hi=60_000),
            timeout_s=_int(env, "SAGEMAKER_MODEL_SERVER_TIMEOUT", 60, hi=MAX_SECONDS),
            startup_timeout_s=_int(env, "BYOC_SERVE_STARTUP_TIMEOUT", 600, hi=MAX_SECONDS),
            grace_period_s=_int(env, "BYOC_SERVE_GRACE_PERIOD", 25, lo=0, hi=MAX_SECONDS),
            max_payload_mb=payload_mb or ANY_PAYLOAD_MB,
            job_payload_mb=payload_mb,
            jvm_heap_mb=_int(env, "BYOC_SERVE_JVM_HEAP_MB", 0, lo=0),
            model_dir=env.get("SM_MODEL_DIR", "").strip() or "/opt/ml/model",
            workdir=env.get("BYOC_SERVE_WORKDIR", "").strip() or None,
            gpus=gpus,
            cpus=cpus,
            memory_bytes=memory_limit() if memory_bytes is None else memory_bytes,
            engine=engine,
            multi_model=multi_model,
            batch=_bool(env, "SAGEMAKER_BATCH", False),
            batch_strategy=_choice(env, "SAGEMAKER_BATCH_STRATEGY", BATCH_STRATEGIES).upper(),
            install_requirements=_bool(env, "BYOC_INSTALL_REQUIREMENTS", True),
            # Measured on a shared 2-core host (bench/README.md): 2 torch threads ran resnet18
            # at 3-9 img/s with OpenMP's default spinning, 18-19 with PASSIVE, 21 with 1 thread.
            omp_wait_policy=env.get("OMP_WAIT_POLICY", "").strip() or ("PASSIVE" if adaptive else ""),
            # A lone request's second thread sleeping between ops cost about 4 ms of its 28 ms p50
            # (resnet18, c=1); spinning 0.1 ms first keeps that, and under load cost 0-5% (noise).
            gomp_spincount=_gomp_spincount(env, adaptive),
            malloc_env=tuple((name, str(_int(env, name, int(default), lo=0)))
                             for name, default in MALLOC_DEFAULTS.items()),
            worker=dataclasses.replace(WorkerSettings.from_env(env), threads=0 if adaptive else threads,
                                       cpus=cpus, status_dir=None),
        )

    @property
    def log_level(self) -> int:
        return self.worker.log_level

    @property
    def program(self) -> str:
        return self.worker.program

    def execution_parameters(self) -> dict:
        """GET /execution-parameters: what a Batch Transform job that sets none of its own should
        use. One request per worker keeps every worker busy; a record set may fill the payload
        limit, and the default handlers answer a multi-record CSV or JSON-lines body per record."""
        return {"MaxConcurrentTransforms": self.workers, "BatchStrategy": self.batch_strategy,
                "MaxPayloadInMB": self.job_payload_mb}

    def worker_env(self) -> dict[str, str]:
        """Environment for the workers (and TorchServe's)."""
        return {
            # The most threads a worker's torch uses (the adaptive count stays within it).
            "OMP_NUM_THREADS": str(self.threads_per_worker),
            "MKL_NUM_THREADS": str(self.threads_per_worker),
            **({"OMP_WAIT_POLICY": self.omp_wait_policy} if self.omp_wait_policy else {}),
            **({"GOMP_SPINCOUNT": self.gomp_spincount} if self.gomp_spincount else {}),
            **dict(self.malloc_env),
            **self.worker.env(),
        }


def _program(env: Mapping[str, str]) -> str:
    name = env.get("SAGEMAKER_PROGRAM", "").strip() or "inference.py"
    if name.startswith("/"):   # SDK v2 local mode without S3 passes the entry point's full path
        name = os.path.basename(name)
    if "/" in name or name.startswith(".") or not name.endswith(".py"):
        raise ConfigError(f"SAGEMAKER_PROGRAM={name!r}: expected a .py file name in <model>/code")
    return name
