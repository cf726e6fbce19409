"""Multi-model endpoints: memory over many load/invoke/unload cycles, and the latency of an
invoke against /invocations on the same model.

    .venv/bin/python bench/multi_model.py                     # 1,000 cycles over 20 models
    .venv/bin/python bench/multi_model.py --cycles 100 --models 5 --requests 100

1. Cycles: a container with SAGEMAKER_MULTI_MODEL=true and N models under /opt/ml/models
   (each a copy of the built-in resnet18 artifact at 64 px, its weights hard-linked). Cycle i
   loads model i % N, invokes it once with a real photo, and unloads it. After the first cycle
   and after every 100th, with no model loaded: the RSS of the processes left in the container
   (`docker top`) and the container's memory (cgroup usage less inactive page cache, as `docker
   stats` counts it, kernel memory included); the last against the first is the figure (target:
   within 10%).
2. Latency: the same model as the only model of a real-time container (`/invocations`) and as
   a loaded model of a multi-model one (`/models/m/invoke`), each sent --requests photos one
   at a time after a warm-up, interleaved in rounds: p50 and mean of each (target: the invoke
   within 10% of /invocations).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from support.containers import classifier_model_dir, container_memory, wait_healthy  # noqa: E402

DOCKER = "/usr/bin/docker"
PHOTO = HERE.parent / "samples" / "photos" / "brick.jpg"


def call(method: str, url: str, body: bytes = None, ctype: str = "application/json", timeout: float = 300):
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def start(name: str, port: int, mounts: list, env: dict) -> str:
    args = [DOCKER, "run", "-d", "--name", name, "--cpus", "2", "-p", f"127.0.0.1:{port}:8080"]
    for src, dst in mounts:
        args += ["-v", f"{src}:{dst}:ro"]
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    subprocess.run(args + ["pytorch-byoc-serve:cpu"], check=True, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(DOCKER, name, url, timeout=300)
    return url


def make_models(root: Path, n: int) -> None:
    first = classifier_model_dir(root / "m0" / "model")
    for i in range(1, n):
        model = root / f"m{i}" / "model"
        (model / "code").mkdir(parents=True)
        for f in ("model.pt", "model.json", "code/inference.py"):
            os.link(first / f, model / f)
    for p in [root, *root.rglob("*")]:
        if p.is_dir():
            p.chmod(0o755)


def processes_rss(container: str) -> int:
    """The resident set of every process left in the container (the front door and tini once
    the models are unloaded), from `docker top`, in bytes."""
    out = subprocess.run([DOCKER, "top", container, "-o", "pid,rss"], capture_output=True, text=True,
                         check=True, timeout=60).stdout.splitlines()[1:]
    return sum(int(line.split()[1]) for line in out) << 10


def cycles(url: str, container: str, n_models: int, count: int, photo: bytes) -> list:
    memory = []
    t0 = time.monotonic()
    for i in range(count):
        name = f"m{i % n_models}"
        status, _ = call("POST", url + "/models",
                         json.dumps({"model_name": name, "url": f"/opt/ml/models/{name}/model"}).encode())
        assert status == 200, status
        status, body = call("POST", f"{url}/models/{name}/invoke", photo, "image/jpeg")
        assert status == 200 and json.loads(body)["predictions"], body[:200]
        assert call("DELETE", f"{url}/models/{name}")[0] == 200
        if i == 0 or (i + 1) % 100 == 0:
            time.sleep(0.5)
            memory.append((i + 1, container_memory(DOCKER, container), processes_rss(container)))
            print(f"cycle {i + 1}: container {memory[-1][1] >> 20} MiB, processes' RSS {memory[-1][2] >> 20} MiB, "
                  f"{(time.monotonic() - t0) / (i + 1):.2f} s per cycle", flush=True)
    return memory


def latencies(url: str, path: str, photo: bytes, n: int) -> list:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call("POST", url + path, photo, "image/jpeg")
        out.append(1000 * (time.perf_counter() - t0))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=1000, help="0: skip them")
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200, help="per stack and round, for the latency (0: skip it)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=18280)
    args = parser.parse_args()
    photo = PHOTO.read_bytes()
    pid = os.getpid()
    names = []
    with tempfile.TemporaryDirectory(prefix="byoc-mme-") as tmp:
        root = Path(tmp) / "models"
        make_models(root, args.models)
        try:
            mme_name, rt_name = f"byoc-mme-{pid}", f"byoc-mme-rt-{pid}"
            names += [mme_name, rt_name]
            mme = start(mme_name, args.port, [(root, "/opt/ml/models")], {"SAGEMAKER_MULTI_MODEL": "true"})
            rt = start(rt_name, args.port + 1, [(root / "m0" / "model", "/opt/ml/model")],
                       {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
            # latency: one worker each, the same model, one request at a time
            if args.requests:
                call("POST", mme + "/models",
                     json.dumps({"model_name": "m0", "url": "/opt/ml/models/m0/model"}).encode())
                runs = {"/invocations": [], "/models/m0/invoke": []}
                for url, path in ((rt, "/invocations"), (mme, "/models/m0/invoke")):
                    latencies(url, path, photo, 20)
                for _ in range(args.rounds):
                    runs["/invocations"] += latencies(rt, "/invocations", photo, args.requests)
                    runs["/models/m0/invoke"] += latencies(mme, "/models/m0/invoke", photo, args.requests)
                inv, mm = runs["/invocations"], runs["/models/m0/invoke"]
                print(f"latency, one request at a time, {len(inv)} each: /invocations p50 "
                      f"{statistics.median(inv):.1f} ms mean {statistics.mean(inv):.1f} ms; /models/m0/invoke p50 "
                      f"{statistics.median(mm):.1f} ms mean {statistics.mean(mm):.1f} ms; invoke / invocations "
                      f"p50 {statistics.median(mm) / statistics.median(inv):.3f}", flush=True)
                call("DELETE", mme + "/models/m0")
            subprocess.run([DOCKER, "rm", "-f", rt_name], stdout=subprocess.DEVNULL)
            if args.cycles:
                memory = cycles(mme, mme_name, args.models, args.cycles, photo)
                for what, k in (("container memory", 1), ("processes' RSS", 2)):
                    first, last = memory[0][k], memory[-1][k]
                    print(f"{what} after cycle 1: {first / 2**20:.1f} MiB; after cycle {memory[-1][0]}: "
                          f"{last / 2**20:.1f} MiB ({100 * (last - first) / first:+.1f}%); "
                          f"every 100: {[round(m[k] / 2**20, 1) for m in memory]}")
        finally:
            for name in names:
                subprocess.run([DOCKER, "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
