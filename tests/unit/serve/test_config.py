import logging

import pytest

from serve.config import MB, ConfigError, ServeConfig, WorkerSettings, held_memory
from serve.torchserve import config as ts
from serve.torchserve.config import parse_properties

BASE = dict(gpus=0, cpus=8, memory_bytes=16 * 1024 * MB)


def cfg(**env):
    return ServeConfig.from_env({k: str(v) for k, v in env.items()}, **BASE)


def test_defaults():
    c = cfg()
    props = parse_properties(ts.render(c, "/store"))
    # TorchServe listens on loopback only; the front door has 8080 on all interfaces
    assert props["inference_address"] == "http://127.0.0.1:8083"
    assert c.port == 8080 and c.engine == "python" and not c.multi_model
    assert props["management_address"] == "http://127.0.0.1:8081"
    assert props["metrics_address"] == "http://127.0.0.1:8082"
    assert props["disable_token_authorization"] == "true"
    assert props["default_workers_per_model"] == "8"  # one per core
    assert c.threads_per_worker == 8 and c.worker.threads == 0  # adaptive, up to every core
    assert c.worker_env()["OMP_NUM_THREADS"] == "8" and c.worker_env()["BYOC_WORKER_CPUS"] == "8"
    assert c.worker_env()["OMP_WAIT_POLICY"] == "PASSIVE"
    assert c.worker_env()["GOMP_SPINCOUNT"] == "10000"  # a short spin before they sleep
    # tensors come from the heap and stay there (no page faults per forward)
    assert c.worker_env()["MALLOC_MMAP_THRESHOLD_"] == str(256 * MB)
    assert c.worker_env()["MALLOC_TRIM_THRESHOLD_"] == str(512 * MB)
    assert props["max_request_size"] == str(6 * MB) == props["max_response_size"]
    assert props["install_py_dep_per_model"] == "false"
    assert props["decode_input_request"] == "false"
    assert props["model_store"] == "/store"
    assert props["load_models"] == "model=model"
    assert c.log_level == logging.INFO


def test_every_line_parses_and_text_ends_with_newline():
    c = cfg(SAGEMAKER_TS_BATCH_SIZE=8, SAGEMAKER_MODEL_SERVER_TIMEOUT=30)
    text = ts.render(c, "/store")
    assert text.endswith("\n")
    lines = text.splitlines()
    assert all("=" in line and line.split("=", 1)[0].strip() for line in lines)
    keys = [line.split("=", 1)[0] for line in lines]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(ts.properties(c, "/store"))


def test_each_variable():
    c = cfg(
        SAGEMAKER_BIND_TO_PORT=9090,
        SAGEMAKER_SAFE_PORT_RANGE="10000-10999",
        SAGEMAKER_MODEL_SERVER_WORKERS=3,
        SAGEMAKER_TS_BATCH_SIZE=16,
        SAGEMAKER_TS_MAX_BATCH_DELAY=25,
        SAGEMAKER_MODEL_SERVER_TIMEOUT=120,
        SAGEMAKER_MAX_PAYLOAD_IN_MB=20,
        SAGEMAKER_CONTAINER_LOG_LEVEL="WARNING",
        SAGEMAKER_PROGRAM="serve_me.py",
        SM_MODEL_DIR="/models/x",
        BYOC_SERVE_WORKDIR="/work/dir",
        BYOC_SERVE_JVM_HEAP_MB=700,
    )
    props = parse_properties(ts.render(c, "/s"))
    assert c.port == 9090 and c.max_payload_mb == 20 and c.timeout_s == 120
    assert ts.backend_url(c) == props["inference_address"] == "http://127.0.0.1:10004"
    assert props["management_address"] == "http://127.0.0.1:10000"
    assert props["metrics_address"] == "http://127.0.0.1:10001"
    assert (props["grpc_inference_address"], props["grpc_inference_port"]) == ("127.0.0.1", "10002")
    assert (props["grpc_management_address"], props["grpc_management_port"]) == ("127.0.0.1", "10003")
    assert props["default_workers_per_model"] == "3"
    model = ts.model_config(c)["model"]["1.0"]
    assert model["batchSize"] == 16 and model["maxBatchDelay"] == 25
    assert model["minWorkers"] == model["maxWorkers"] == 3
    assert props["default_response_timeout"] == "120" and model["responseTimeout"] == 120
    assert props["max_request_size"] == str(20 * MB)
    assert c.log_level == logging.WARNING
    assert "-Xmx700m" in props["vmargs"]
    assert (c.threads_per_worker, c.worker.threads) == (8, 0)  # adaptive: 8 // workers busy
    assert (c.model_dir, c.workdir, c.program) == ("/models/x", "/work/dir", "serve_me.py")
    assert c.worker_env()["SAGEMAKER_PROGRAM"] == "serve_me.py"


def test_models_json_property_is_valid_json():
    import json

    props = parse_properties(ts.render(cfg(SAGEMAKER_TS_BATCH_SIZE=4), "/s"))
    assert json.loads(props["models"])["model"]["1.0"]["batchSize"] == 4


def test_workers_default_one_per_gpu():
    c = ServeConfig.from_env({}, gpus=4, cpus=32, memory_bytes=None)
    assert c.workers == 4 and c.threads_per_worker == 8


def test_two_cores_two_workers_adaptive_threads():
    c = ServeConfig.from_env({}, gpus=0, cpus=2, memory_bytes=None)
    assert (c.workers, c.threads_per_worker, c.worker.threads, c.worker.cpus) == (2, 2, 0, 2)


def test_omp_num_threads_wins():
    c = cfg(OMP_NUM_THREADS=1)
    assert c.threads_per_worker == c.worker.threads == 1
    assert c.worker_env()["BYOC_WORKER_THREADS"] == "1"
    assert "OMP_WAIT_POLICY" not in c.worker_env()  # fixed threads: OpenMP's own default
    assert "GOMP_SPINCOUNT" not in c.worker_env()
    active = cfg(OMP_WAIT_POLICY="ACTIVE").worker_env()
    assert active["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in active  # the user's policy, untouched
    assert cfg(GOMP_SPINCOUNT="0").worker_env()["GOMP_SPINCOUNT"] == "0"
    with pytest.raises(ConfigError, match="GOMP_SPINCOUNT"):
        cfg(GOMP_SPINCOUNT="fast")


def test_workers_override_keeps_threads_adaptive():
    c = cfg(SAGEMAKER_MODEL_SERVER_WORKERS=2)
    assert (c.workers, c.worker.threads) == (2, 0)


def test_worker_settings_round_trip_through_the_environment():
    c = cfg(BYOC_TOPK=3, BYOC_MAX_INSTANCES=8, BYOC_MAX_IMAGE_PIXELS=1000, SAGEMAKER_PROGRAM="x.py",
            SAGEMAKER_CONTAINER_LOG_LEVEL="DEBUG", OMP_NUM_THREADS=2,
            BYOC_GPU_DECODE="OFF", BYOC_SERVE_AMP="fp16")
    env = c.worker_env()
    assert "BYOC_MAX_PAYLOAD_BYTES" not in env  # nothing reads it: the front door has the limit
    assert WorkerSettings.from_env(env) == c.worker
    assert (c.worker.topk, c.worker.max_instances, c.worker.max_image_pixels) == (3, 8, 1000)
    assert (c.worker.program, c.worker.log_level, c.worker.threads, c.worker.cpus) == ("x.py", 10, 2, 8)
    assert (c.worker.gpu_decode, c.worker.serve_amp) == ("off", "fp16")


@pytest.mark.parametrize("value,expected", [("", True), ("true", True), ("1", True), ("no", False), ("false", False)])
def test_install_requirements(value, expected):
    assert cfg(BYOC_INSTALL_REQUIREMENTS=value).install_requirements is expected


def test_optimize_model_is_on_by_default_can_be_turned_off_and_reaches_the_workers():
    assert cfg().worker.optimize_model is True
    off = cfg(BYOC_OPTIMIZE_MODEL="false")
    assert WorkerSettings.from_env(off.worker_env()).optimize_model is False


def test_every_variable_is_in_the_documented_list():
    """serve/config.py's docstring is the complete list README points to."""
    import re

    from serve import config

    source = open(config.__file__).read()
    read = set(re.findall(r'"((?:SAGEMAKER|BYOC|SM|OMP)_[A-Z_]+)"', source))
    internal = {"BYOC_WORKER_THREADS", "BYOC_WORKER_CPUS", "BYOC_SERVE_STATUS_DIR", "MKL_NUM_THREADS"}
    missing = [name for name in sorted(read - internal) if name not in config.__doc__]
    assert not missing


@pytest.mark.parametrize("level,expected", [("10", 10), ("debug", 10), ("ERROR", 40), ("", 20), ("0", 0),
                                            ("50", 50), ("critical", 50)])
def test_log_levels(level, expected):
    assert cfg(SAGEMAKER_CONTAINER_LOG_LEVEL=level).log_level == expected


@pytest.mark.parametrize(
    "name,value",
    [
        ("SAGEMAKER_BIND_TO_PORT", "http"),
        ("SAGEMAKER_BIND_TO_PORT", "70000"),
        ("SAGEMAKER_BIND_TO_PORT", "8081"),  # collides with management
        ("SAGEMAKER_BIND_TO_PORT", "8083"),  # collides with TorchServe's own inference port
        ("SAGEMAKER_MODEL_SERVER_WORKERS", "0"),
        ("SAGEMAKER_MODEL_SERVER_WORKERS", "two"),
        ("SAGEMAKER_TS_BATCH_SIZE", "-1"),
        ("SAGEMAKER_TS_MAX_BATCH_DELAY", "-5"),
        ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "1.5"),
        # upper bounds: a typo is refused at start (and TorchServe's config takes Java ints)
        ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "3601"),
        ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "99999999999999"),
        ("SAGEMAKER_MODEL_SERVER_WORKERS", "1025"),
        ("SAGEMAKER_TS_MAX_BATCH_DELAY", "60001"),
        ("BYOC_SERVE_STARTUP_TIMEOUT", "3601"),
        ("BYOC_SERVE_GRACE_PERIOD", "3601"),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "-1"),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1025"),
        ("SAGEMAKER_CONTAINER_LOG_LEVEL", "chatty"),
        ("SAGEMAKER_CONTAINER_LOG_LEVEL", "51"),    # would hide why the server stops
        ("SAGEMAKER_CONTAINER_LOG_LEVEL", "100"),
        ("SAGEMAKER_CONTAINER_LOG_LEVEL", "\u00b2"),   # a digit to isdigit(), not to int()
        ("SAGEMAKER_CONTAINER_LOG_LEVEL", "-10"),
        ("SAGEMAKER_SAFE_PORT_RANGE", "10000"),
        ("SAGEMAKER_SAFE_PORT_RANGE", "9-3"),
        ("SAGEMAKER_SAFE_PORT_RANGE", "10000-10003"),  # fewer than 5 ports
        ("SAGEMAKER_PROGRAM", "../evil.py"),
        ("SAGEMAKER_PROGRAM", "inference.sh"),
        ("BYOC_TOPK", "0"),
        ("BYOC_TOPK", "five"),
        ("BYOC_MAX_INSTANCES", "-1"),
        ("BYOC_MAX_IMAGE_PIXELS", "40MP"),
        ("BYOC_INSTALL_REQUIREMENTS", "maybe"),
        ("BYOC_OPTIMIZE_MODEL", "fast"),
        ("BYOC_SERVE_STARTUP_TIMEOUT", "0"),
        ("BYOC_SERVE_GRACE_PERIOD", "-1"),
        ("BYOC_SERVE_JVM_HEAP_MB", "lots"),
        ("BYOC_GPU_DECODE", "yes"),
        ("BYOC_SERVE_AMP", "bf17"),
        ("BYOC_SERVING_ENGINE", "jvm"),
        ("BYOC_MERGE_CALLS", "sometimes"),
        ("SAGEMAKER_MULTI_MODEL", "many"),
        ("SAGEMAKER_BATCH", "yes please"),
        ("SAGEMAKER_BATCH_STRATEGY", "ALL_AT_ONCE"),
    ],
)
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        cfg(**{name: value})


def test_jvm_heap_from_memory_limit():
    def heap(memory):
        return ts.jvm_heap_mb(ServeConfig.from_env({}, gpus=0, cpus=2, memory_bytes=memory))
    assert heap(2 * 1024 * MB) == 256
    assert heap(16 * 1024 * MB) == 2048
    assert heap(512 * 1024 * MB) == 4096
    assert ts.jvm_heap_mb(cfg(BYOC_SERVE_JVM_HEAP_MB=700)) == 700


def test_a_full_program_path_means_its_file_name():
    assert cfg(SAGEMAKER_PROGRAM="/tmp/tmpx1/mnist.py").program == "mnist.py"


def test_engine_and_multi_model():
    assert cfg(BYOC_SERVING_ENGINE="TorchServe").engine == "torchserve"
    c = cfg(SAGEMAKER_MULTI_MODEL="true")
    assert c.multi_model and c.model_workers == 1 and c.workers == 8   # one worker per model by default
    assert cfg(SAGEMAKER_MULTI_MODEL="true", SAGEMAKER_MODEL_SERVER_WORKERS=2).model_workers == 2
    with pytest.raises(ConfigError, match="real-time endpoints only"):
        cfg(SAGEMAKER_MULTI_MODEL="true", BYOC_SERVING_ENGINE="torchserve")


def test_execution_parameters_follow_the_settings():
    assert cfg().execution_parameters() == {"MaxConcurrentTransforms": 8, "BatchStrategy": "MULTI_RECORD",
                                            "MaxPayloadInMB": 6}
    c = cfg(SAGEMAKER_BATCH="true", SAGEMAKER_BATCH_STRATEGY="SINGLE_RECORD", SAGEMAKER_MODEL_SERVER_WORKERS=3,
            SAGEMAKER_MAX_PAYLOAD_IN_MB=100)
    assert c.batch
    assert c.execution_parameters() == {"MaxConcurrentTransforms": 3, "BatchStrategy": "SINGLE_RECORD",
                                        "MaxPayloadInMB": 100}


def test_the_upper_bounds_themselves_are_taken():
    c = cfg(SAGEMAKER_MODEL_SERVER_TIMEOUT=3600, SAGEMAKER_MODEL_SERVER_WORKERS=1024, SAGEMAKER_TS_MAX_BATCH_DELAY=60000,
            BYOC_SERVE_STARTUP_TIMEOUT=3600, BYOC_SERVE_GRACE_PERIOD=3600, SAGEMAKER_MAX_PAYLOAD_IN_MB=1024)
    assert (c.timeout_s, c.workers, c.max_batch_delay_ms, c.startup_timeout_s, c.grace_period_s) == (
        3600, 1024, 60000, 3600, 3600)
    props = parse_properties(ts.render(c, "/s"))
    assert all(int(props[k]) < 2**31 for k in ("default_response_timeout", "default_startup_timeout",
                                                "default_workers_per_model", "max_request_size"))


def test_a_payload_limit_of_0_means_any_size():
    # Batch Transform copies the job's MaxPayloadInMB=0 (any size, chunked) into the variable
    c = cfg(SAGEMAKER_BATCH="true", SAGEMAKER_MAX_PAYLOAD_IN_MB=0)
    assert c.max_payload_mb == 1024
    assert c.execution_parameters()["MaxPayloadInMB"] == 0   # the job's own value, reported back
    assert parse_properties(ts.render(c, "/s"))["max_request_size"] == str(1024 * MB)


def test_page_cache_does_not_count_as_memory_held():
    # cgroup v1, measured in a multi-model container after 230 load/unload cycles: 27 MiB of
    # active page cache (model files, libraries) that the kernel drops under pressure
    v1 = "cache 36700160\nrss 231735296\nmapped_file 5242880\ninactive_file 8388608\nactive_file 28311552\n"
    assert held_memory(270 * MB, v1) == (270 - 8 - 27 + 5) * MB
    v2 = "anon 200000000\nfile 90000000\nfile_mapped 10000000\nshmem 0\nactive_file 60000000\ninactive_file 30000000\n"
    assert held_memory(300_000_000, v2) == 300_000_000 - 90_000_000 + 10_000_000
    assert held_memory(10 * MB, "inactive_file 50000000\n") == 0


def test_backslash_is_escaped():
    text = ts.render(cfg(), "C:\\store")
    assert parse_properties(text)["model_store"] == "C:\\store"


def test_config_is_frozen():
    c = cfg()
    with pytest.raises(Exception):
        c.workers = 9



def test_gpu_host_defaults_and_sagemaker_settings_still_win():
    """Issue 10: on a GPU host the default handlers batch on the GPU, so batching is on by default
    (the values are marked to be measured in serve/config.py)."""
    from serve.config import (CPU_BATCH_SIZE, CPU_MAX_BATCH_DELAY_MS, GPU_BATCH_SIZE, GPU_MAX_BATCH_DELAY_MS,
                              GPU_WORKERS_PER_GPU)

    gpu = dict(BASE, gpus=2)
    model = ts.model_config(ServeConfig.from_env({}, **gpu))["model"]["1.0"]
    assert model["minWorkers"] == model["maxWorkers"] == 2 * GPU_WORKERS_PER_GPU
    assert (model["batchSize"], model["maxBatchDelay"]) == (GPU_BATCH_SIZE, GPU_MAX_BATCH_DELAY_MS)
    assert GPU_BATCH_SIZE > 1 and GPU_MAX_BATCH_DELAY_MS <= 10  # a lone request waits at most 10 ms
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "5", "SAGEMAKER_TS_BATCH_SIZE": "4", "SAGEMAKER_TS_MAX_BATCH_DELAY": "50"}
    model = ts.model_config(ServeConfig.from_env(env, **gpu))["model"]["1.0"]
    assert (model["minWorkers"], model["batchSize"], model["maxBatchDelay"]) == (5, 4, 50)
    cpu = ts.model_config(ServeConfig.from_env({}, **BASE))["model"]["1.0"]
    assert (cpu["minWorkers"], cpu["batchSize"], cpu["maxBatchDelay"]) == (8, CPU_BATCH_SIZE, CPU_MAX_BATCH_DELAY_MS)
    assert CPU_BATCH_SIZE > 1 and 0 < CPU_MAX_BATCH_DELAY_MS <= 2  # a lone request waits at most 2 ms


def test_the_users_malloc_settings_win_and_bad_ones_stop_serve():
    env = cfg(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="0").worker_env()
    assert (env["MALLOC_MMAP_THRESHOLD_"], env["MALLOC_TRIM_THRESHOLD_"]) == ("131072", "0")
    with pytest.raises(ConfigError, match="MALLOC_TRIM_THRESHOLD_"):
        cfg(MALLOC_TRIM_THRESHOLD_="lots")


def test_the_default_accept_is_sagemakers_setting_when_set():
    c = ServeConfig.from_env({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "application/x-npy"})
    assert c.worker.default_accept == "application/x-npy"
    assert WorkerSettings.from_env(c.worker_env()).default_accept == "application/x-npy"   # the workers get it
    assert ServeConfig.from_env({}).worker.default_accept == ""
    for bad in ("*/*", "json", "application/json, text/csv", "application/json; q=1"):
        with pytest.raises(ConfigError, match="SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"):
            ServeConfig.from_env({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": bad})
