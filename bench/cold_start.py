"""Cold start: `docker run` to the first answer, against its floor, under the same limits.

    .venv/bin/python bench/cold_start.py                                  # resnet18, 2 cores and 1 CPU / 2 GB
    .venv/bin/python bench/cold_start.py --model efficientnet_lite0 --limits 1:2g --rounds 3

For each limit (``CPUS:MEMORY``, either part may be empty) and round, one after another:
  floor      the same image, its entrypoint replaced by python: import the model's
             code/inference.py, call model_fn, and answer one photo (input_fn, predict_fn,
             output_fn), printing a marker: what any server has to do before its first answer
  python     `serve` with the default engine: the first POST /invocations that gets 200
  torchserve `serve` with BYOC_SERVING_ENGINE=torchserve, the same way
Each clock starts when `docker run` is called and stops at the marker or the answer, so the
container's creation counts in all three. The client sends one request as soon as the port
accepts connections and, on a refusal or a 503, again 20 ms later. Ratios are best / best
and median / median over the rounds; import times of torch and torchvision inside the image
come first (python -X importtime, the cumulative figures of the two top-level modules).
The models and the workshop inference.py are bench/serve_compare.py's.
"""
import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import serve_compare  # noqa: E402  (the models, the workshop inference.py, the photos)

DOCKER = serve_compare.DOCKER
MARKER = "FLOOR-ANSWERED"
FLOOR = f'''\
import sys
sys.path.insert(0, "/opt/ml/model/code")
import inference
model = inference.model_fn("/opt/ml/model")
body = open("/tmp/photo.jpg", "rb").read()
inference.output_fn(inference.predict_fn(inference.input_fn(body, "image/jpeg"), model), "application/json")
print("{MARKER}", flush=True)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def limit_args(limit: str) -> list[str]:
    cpus, _, memory = limit.partition(":")
    return (["--cpus", cpus] if cpus else []) + (["--memory", memory] if memory else [])


def floor(image: str, model_dir: Path, photo: Path, limit: str) -> float:
    name = f"byoc-cold-floor-{free_port()}"
    t0 = time.monotonic()
    proc = subprocess.Popen([DOCKER, "run", "--rm", "--name", name, *limit_args(limit), "-v",
                             f"{model_dir}:/opt/ml/model:ro", "-v", f"{photo}:/tmp/photo.jpg:ro",
                             "--entrypoint", "python", image, "-c", FLOOR], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if MARKER in line:
                return time.monotonic() - t0
        raise RuntimeError(f"the floor run ended without answering (status {proc.wait()})")
    finally:
        proc.wait()


def first_answer(image: str, model_dir: Path, body: bytes, limit: str, env: dict, timeout_s: float = 300) -> float:
    port = free_port()
    name = f"byoc-cold-{port}"
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    t0 = time.monotonic()
    subprocess.run([DOCKER, "run", "-d", "--name", name, *limit_args(limit), "-p", f"127.0.0.1:{port}:8080",
                    *env_args, "-v", f"{model_dir}:/opt/ml/model:ro", image], check=True, stdout=subprocess.DEVNULL)
    try:
        while time.monotonic() - t0 < timeout_s:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "image/jpeg"})
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as response:
                    json.loads(response.read())
                    return time.monotonic() - t0
            except urllib.error.HTTPError as exc:
                if exc.code != 503:
                    raise RuntimeError(f"{name}: {exc.code} {exc.read()[:300]!r}") from None
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        raise TimeoutError(f"{name}: no answer in {timeout_s:.0f} s")
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def import_times(image: str, limit: str) -> dict:
    """Cumulative import time (s) of torch and torchvision in the image, under the limit."""
    out = subprocess.run([DOCKER, "run", "--rm", *limit_args(limit), "--entrypoint", "python", image, "-X",
                          "importtime", "-c", "import torch, torchvision"], capture_output=True, text=True)
    times = {}
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S+)$", line)
        if m and m.group(2) in ("torch", "torchvision"):
            times[m.group(2)] = int(m.group(1)) / 1e6
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="pytorch-byoc-serve:cpu")
    parser.add_argument("--model", choices=["resnet18", "efficientnet_lite0"], default="resnet18")
    parser.add_argument("--limits", nargs="+", default=["2:", "1:2g"], help="CPUS:MEMORY per setting")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stacks", nargs="+", default=["floor", "python", "torchserve"])
    args = parser.parse_args()
    photo = HERE.parent / "samples" / "photos" / "brick.jpg"
    body = photo.read_bytes()
    with tempfile.TemporaryDirectory(prefix="byoc-cold-") as tmp:
        build = serve_compare.build_model_dirs if args.model == "resnet18" else serve_compare.build_lite0_dir
        model_dir = build(Path(tmp))["workshop"]
        for limit in args.limits:
            print(f"import times in the image at {limit}: {import_times(args.image, limit)}", flush=True)
        results = {}
        for limit in args.limits:
            for r in range(1, args.rounds + 1):
                for stack in args.stacks:
                    if stack == "floor":
                        seconds = floor(args.image, model_dir, photo, limit)
                    else:
                        env = {} if stack == "python" else {"BYOC_SERVING_ENGINE": stack}
                        seconds = first_answer(args.image, model_dir, body, limit, env)
                    results.setdefault((limit, stack), []).append(seconds)
                    print(f"{args.model} {limit:>6} round {r} {stack:>10}: {seconds:.2f} s", flush=True)
    print(f"\n| model | limit | stack | best s | median s | best / floor's best | median / floor's median |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for limit in args.limits:
        base = results.get((limit, "floor"))
        for stack in args.stacks:
            runs = results[(limit, stack)]
            best, median = min(runs), statistics.median(runs)
            ratio = (f"{best / min(base):.2f}x | {median / statistics.median(base):.2f}x" if base
                     else "- | -")
            print(f"| {args.model} | {limit} | {stack} | {best:.2f} | {median:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
