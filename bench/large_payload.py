"""Asynchronous inference's payloads: an application/x-npy body of 400 MB and of 1 GB through
the serving image, with SAGEMAKER_MAX_PAYLOAD_IN_MB=1024, under a memory limit.

    .venv/bin/python bench/large_payload.py                       # 400 MB at 3g, 1 GB at 4g, python engine
    .venv/bin/python bench/large_payload.py --engines python torchserve --sizes 400

The model's code/inference.py loads the npy and answers its shape and sum (so the answer is
checked exactly against the array sent). For each size: the status, the seconds from the first
byte sent to the answer, whether the answer is right, the container's peak memory (cgroup v1
max_usage_in_bytes, or v2 memory.peak: page cache included, so the spooled file counts) and
whether it was OOM-killed.
"""
import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from support.containers import SUM_NPY_INFERENCE, wait_healthy  # noqa: E402

DOCKER = "/usr/bin/docker"
PEAK = ("cat /sys/fs/cgroup/memory.peak 2>/dev/null || cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes")


def run(image: str, engine: str, megabytes: int, memory: str, model_dir: Path, port: int) -> dict:
    data = np.arange(megabytes * 1000 * 1000 // 4 - 32, dtype=np.float32) % 7   # the body: MB x 10^6 bytes
    buf = io.BytesIO()
    np.save(buf, data)
    body = buf.getvalue()
    want = {"shape": [data.size], "sum": float(data.sum(dtype=np.float64))}
    name = f"byoc-payload-{port}"
    subprocess.run([DOCKER, "run", "-d", "--name", name, "--memory", memory, "-p", f"127.0.0.1:{port}:8080",
                    "-e", "SAGEMAKER_MAX_PAYLOAD_IN_MB=1024", "-e", "SAGEMAKER_MODEL_SERVER_TIMEOUT=3600",
                    "-e", f"BYOC_SERVING_ENGINE={engine}", "-v", f"{model_dir}:/opt/ml/model:ro", image],
                   check=True, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(DOCKER, name, url, timeout=300)
        t0 = time.monotonic()
        request = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": "application/x-npy"})
        try:
            with urllib.request.urlopen(request, timeout=3600) as r:
                status, answer = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, exc.read()
        except OSError as exc:
            status, answer = None, repr(exc).encode()
        seconds = time.monotonic() - t0
        state = json.loads(subprocess.run([DOCKER, "inspect", "-f", "{{json .State}}", name],
                                          capture_output=True, text=True).stdout)
        peak = subprocess.run([DOCKER, "exec", name, "sh", "-c", PEAK], capture_output=True, text=True).stdout
        right = status == 200 and json.loads(answer) == want
        return {"engine": engine, "MB": megabytes, "memory": memory, "status": status, "seconds": round(seconds, 1),
                "right": right, "peak_MiB": int(peak.split()[0]) >> 20 if peak.strip() else None,
                "oom_killed": state.get("OOMKilled"), "running": state.get("Running"),
                "answer": answer[:200].decode(errors="replace") if not right else ""}
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="pytorch-byoc-serve:cpu")
    parser.add_argument("--engines", nargs="+", default=["python"])
    parser.add_argument("--sizes", nargs="+", default=["400:3g", "1000:4g"],
                        help="MB:MEMORY (a body of MB x 10^6 bytes: 1000 is asynchronous inference's 1 GB)")
    parser.add_argument("--port", type=int, default=18380)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="byoc-payload-") as tmp:
        model = Path(tmp) / "model"
        (model / "code").mkdir(parents=True)
        (model / "code" / "inference.py").write_text(SUM_NPY_INFERENCE)
        for p in [Path(tmp), model, model / "code", model / "code" / "inference.py"]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        print("| engine | body | --memory | status | seconds | right answer | peak memory | OOM-killed |")
        print("| --- | ---: | --- | --- | ---: | --- | ---: | --- |")
        for engine in args.engines:
            for size in args.sizes:
                mb, _, memory = size.partition(":")
                r = run(args.image, engine, int(mb), memory, model, args.port)
                print(f"| {r['engine']} | {r['MB']} MB | {r['memory']} | {r['status']} | {r['seconds']} | "
                      f"{r['right']} | {r['peak_MiB']} MiB | {r['oom_killed']} |", flush=True)
                if r["answer"]:
                    print(f"  answer: {r['answer']}")


if __name__ == "__main__":
    main()
