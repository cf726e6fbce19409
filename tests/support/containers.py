"""Run, start and watch the images' containers (the container tests' helpers; fixtures live in
tests/container/conftest.py)."""
import contextlib
import subprocess


def run_in(docker, image, *cmd, user=None, entrypoint=None, env=None, timeout=300):
    """docker run --rm IMAGE CMD...; returns the CompletedProcess (text)."""
    args = [docker, "run", "--rm"]
    if user:
        args += ["--user", user]
    if entrypoint is not None:
        args += ["--entrypoint", entrypoint]
    for k, v in (env or {}).items():
        args += ["-e", f"{k}={v}"]
    return subprocess.run(args + [image, *cmd], capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- serving
# A user's code/inference.py that answers an npy body's shape and exact sum: a large body's
# answer checked without sending it back (asynchronous inference's sizes).
SUM_NPY_INFERENCE = """
import io
import json
import numpy as np

def model_fn(model_dir):
    return None

def input_fn(body, content_type):
    return np.load(io.BytesIO(body), allow_pickle=False)

def predict_fn(data, model):
    return {"shape": list(data.shape), "sum": float(data.sum(dtype=np.float64))}

def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"
"""

# A user's code/inference.py whose model_fn takes {seconds} s: a multi-model load in flight.
SLOW_LOAD_INFERENCE = """
import time

def model_fn(model_dir):
    time.sleep({seconds})
    return "slow"

def transform_fn(model, body, content_type, accept):
    return b"slow", "text/plain"
"""


def classifier_model_dir(path, classes=("brick", "grass", "gravel"), size=64, arch="resnet18", seed=0):
    """A built-in image-classifier artifact (model.pt, model.json, code/inference.py),
    as the trainer exports it, with random weights: small enough for a 2-core machine."""
    import torch

    from byoc import artifact

    torch.manual_seed(seed)
    spec = artifact.model_spec(arch=arch, library="torchvision", classes=list(classes), image_size=size,
                               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    artifact.write(artifact.build_model(spec).eval(), spec, path)
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)   # the image's user 1000 reads it
    return path


def start_serve(docker, image, model_dir, port, name, env=None, run_args=()):
    """docker run -d the serving image with model_dir at /opt/ml/model on 127.0.0.1:port."""
    args = [docker, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
            "-v", f"{model_dir}:/opt/ml/model:ro", *run_args]
    for k, v in (env or {}).items():
        args += ["-e", f"{k}={v}"]
    subprocess.run(args + [image], check=True, capture_output=True, text=True)
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def serving(docker, image, model_dir, port, name, env=None):
    """The serving image on model_dir, healthy: yields its URL; the container is removed after."""
    try:
        url = start_serve(docker, image, model_dir, port, name, env=env)
        wait_healthy(docker, name, url)
        yield url
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)


def logs_of(docker, name):
    out = subprocess.run([docker, "logs", name], capture_output=True, text=True)
    return out.stdout + out.stderr


def wait_healthy(docker, name, url, timeout=240):
    """Poll /ping (as SageMaker's health check does) until 200; fail with the log if never."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/ping", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        state = subprocess.run([docker, "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True)
        if state.stdout.strip() != "true":
            break
        time.sleep(1)
    raise AssertionError(f"{name} did not become healthy:\n{logs_of(docker, name)[-4000:]}")


def container_memory(docker, name):
    """The container's memory in bytes as `docker stats` counts it: cgroup usage
    less inactive page cache (cgroup v2 memory.current, or v1 usage_in_bytes)."""
    script = ("if [ -f /sys/fs/cgroup/memory.current ]; then cat /sys/fs/cgroup/memory.current; "
              "grep '^inactive_file ' /sys/fs/cgroup/memory.stat; else "
              "cat /sys/fs/cgroup/memory/memory.usage_in_bytes; "
              "grep '^total_inactive_file ' /sys/fs/cgroup/memory/memory.stat; fi")
    out = subprocess.run([docker, "exec", name, "sh", "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    return int(out[0]) - int(out[2])
