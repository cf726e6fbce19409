"""Issue 21, item 2: the two outside candidates for the default serving engine, measured
beside our image's default engine (the python worker pool under the aiohttp front door).

    .venv/bin/python bench/engine_candidates.py --tune --ray-load   # everything, 12 min on 2 cores
    .venv/bin/python bench/engine_candidates.py --parts litserve --no-build --rounds 4 \
        --requests 100 200 200 --cold-rounds 0 --batch-trials 0        # the load rounds only
    .venv/bin/python bench/engine_candidates.py --parts ray --ray-reuse --ray-load

litserve  builds byoc-bench-litserve:cpu FROM our serving image plus a pinned LitServe
          (bench/candidates/litserve.Dockerfile; the host CA goes in as a build secret), whose
          server (bench/candidates/litserve_server.py) runs the same workshop inference.py as ours:
          - image size added, and what pip added (versions, each wheel's build date);
          - --tune: a few LitServe settings at c=8 and 32 (uvicorn processes, batch, its ZeroMQ
            queue); the runs below use --litserve-env (default LS_FAST_QUEUE=1);
          - load: ours and LitServe started side by side under docker --cpus, the idle one paused,
            rounds interleaved (ours, litserve, ours, litserve); bench/serve_load.py's client and
            bench/serve_compare.py's real JPEGs and model dir;
          - one corrupt JPEG among good ones, sent together: the statuses on both servers;
          - `docker run` to the first answer (bench/cold_start.py's clock) and the floor, at each
            --limits, alternating the stacks.
ray       a throwaway venv under /tmp with ray[serve]: the size pip added, what it installed,
          and in a network namespace of its own (unshare -n: whatever Ray listens on is reachable
          from nowhere else; dashboard and HTTP on 127.0.0.1 anyway; usage stats off):
          import + ray.init + serve.run of a trivial deployment to its first answer, and the memory
          of every process it started. --ray-load: the workshop ResNet-18 through Ray Serve
          (2 replicas x 1 thread, @serve.batch 4 / 1 ms, our CPU defaults) at c=8 and c=32, on the
          host (no docker limit; the host has the cores it has). Needs root (unshare).
Every figure line ends with the 1-minute load average: the machine is shared.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import cold_start  # noqa: E402  (first_answer / floor: the same clock as the cold-start bench)
import serve_compare  # noqa: E402  (the model dirs, the photos, start/pause helpers)
import serve_load  # noqa: E402  (the client)

DOCKER = serve_compare.DOCKER
CANDIDATES = HERE / "candidates"
LITSERVE_IMAGE = "byoc-bench-litserve:cpu"


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def sh(*cmd, **kw) -> str:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, **kw).stdout


# ---------------------------------------------------------------------------------------- LitServe

def image_size(image: str) -> int:
    return int(sh(DOCKER, "image", "inspect", "-f", "{{.Size}}", image).strip())


def build_litserve(base: str, version: str) -> None:
    created = sh(DOCKER, "image", "inspect", "-f", "{{.Created}} {{.Id}}", base).strip()
    print(f"base image {base}: created {created}", flush=True)
    t0 = time.monotonic()
    subprocess.run([DOCKER, "build", "-q", "--secret", "id=ca,src=/etc/ssl/certs/ca-certificates.crt",
                    "--build-arg", f"BASE={base}", "--build-arg", f"LITSERVE_VERSION={version}",
                    "-f", str(CANDIDATES / "litserve.Dockerfile"), "-t", LITSERVE_IMAGE, str(CANDIDATES)],
                   check=True, env={**os.environ, "DOCKER_BUILDKIT": "1"}, stdout=subprocess.DEVNULL)
    print(f"built {LITSERVE_IMAGE} (litserve=={version}) in {time.monotonic() - t0:.0f} s", flush=True)


def report_litserve_image(base: str) -> None:
    base_size, size = image_size(base), image_size(LITSERVE_IMAGE)
    print(f"image size: {base} {base_size / 1e6:.1f} MB, {LITSERVE_IMAGE} {size / 1e6:.1f} MB, "
          f"added {(size - base_size) / 1e6:.1f} MB (docker image inspect .Size)")
    history = sh(DOCKER, "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", LITSERVE_IMAGE)
    for line in history.splitlines()[:4]:
        size_text, created_by = line.split("\t", 1)
        print(f"  layer {size_text:>9}  {created_by[:110]}")
    deps = sh(DOCKER, "run", "--rm", "--entrypoint", "cat", LITSERVE_IMAGE, "/opt/byoc/bench-litserve-deps.txt")
    print("pip added (name, version, newest date inside its wheel = its build date, "
          "where the wheel has one):")
    for line in deps.splitlines():
        print(f"  {line}")
    site = sh(DOCKER, "run", "--rm", "--entrypoint", "python", LITSERVE_IMAGE, "-c",
              "import litserve, fastapi, uvicorn, pydantic, zmq; "
              "print(litserve.__version__, fastapi.__version__, uvicorn.__version__, pydantic.VERSION, zmq.__version__)")
    print(f"imported in the image: litserve fastapi uvicorn pydantic pyzmq = {site.strip()}", flush=True)


def start_litserve(name: str, model_dir: Path, port: int, cpus: str, env: dict) -> None:
    env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    subprocess.run([DOCKER, "run", "-d", "--name", name, "--cpus", cpus, "-p", f"127.0.0.1:{port}:8080",
                    *env_args, "-v", f"{model_dir}:/opt/ml/model:ro", LITSERVE_IMAGE],
                   check=True, stdout=subprocess.DEVNULL)


def remove(name: str) -> None:
    subprocess.run([DOCKER, "unpause", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([DOCKER, "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tune(model_dir: Path, bodies: list, cpus: str, port: int, requests: int) -> None:
    """A few LitServe settings, one container at a time, c=8 and c=32."""
    settings = [
        {"LS_WORKERS": "2", "LS_API_SERVERS": "1", "LS_BATCH": "4"},
        {"LS_WORKERS": "2", "LS_API_SERVERS": "2", "LS_BATCH": "4"},
        {"LS_WORKERS": "2", "LS_API_SERVERS": "1", "LS_BATCH": "1"},
        {"LS_WORKERS": "2", "LS_API_SERVERS": "1", "LS_BATCH": "4", "LS_FAST_QUEUE": "1"},
        {"LS_WORKERS": "2", "LS_API_SERVERS": "1", "LS_BATCH": "1", "LS_FAST_QUEUE": "1"},
    ]
    print(f"\nLitServe settings, --cpus {cpus}, {requests} requests per level (LS_THREADS: cpus // workers)")
    for env in settings:
        name = f"byoc-cand-tune-{os.getpid()}"
        url = f"http://127.0.0.1:{port}"
        try:
            start_litserve(name, model_dir, port, cpus, env)
            serve_compare.wait_answering(name, url, bodies[0], 300)
            serve_load.run(url, bodies, 10, 1, 60)
            for c in (8, 32):
                ok, errors, rps, p50, p99 = serve_load.run(url, bodies, requests, c, 120)
                print(f"  {json.dumps(env):<90} c={c:<3} ok {ok:>4} errors {errors:>3} {rps:6.1f} req/s "
                      f"p50 {p50:7.1f} ms p99 {p99:7.1f} ms  {load()}", flush=True)
        finally:
            remove(name)


def statuses_with_one_corrupt(url: str, bodies: list, group: int, trials: int) -> dict:
    """``group`` requests sent at once (a barrier), one of them a corrupt JPEG; counts of
    (which, status) over the trials."""
    corrupt = bodies[0][:200] + b"\x00" * 200  # a JPEG header, then garbage
    target = url.split("//", 1)[1]
    host, port = target.split(":")
    counts = {}
    for _ in range(trials):
        barrier = threading.Barrier(group)
        results = [None] * group
        bad = group // 2

        def send(i):
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            body = corrupt if i == bad else bodies[(i + 1) % len(bodies)]
            barrier.wait()
            try:
                conn.request("POST", "/invocations", body=body,
                             headers={"Content-Type": "image/jpeg", "Accept": "application/json"})
                response = conn.getresponse()
                response.read()
                results[i] = response.status
            except (OSError, http.client.HTTPException) as exc:
                results[i] = type(exc).__name__
            finally:
                conn.close()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(group)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, status in enumerate(results):
            key = ("corrupt" if i == bad else "good", status)
            counts[key] = counts.get(key, 0) + 1
    return counts


def litserve_part(args, model_dir: Path, bodies: list) -> None:
    if not args.no_build:
        build_litserve(args.base, args.litserve_version)
    report_litserve_image(args.base)
    if args.tune:
        tune(model_dir, bodies, args.cpus, args.port, args.tune_requests)

    counts = args.requests * len(args.concurrency) if len(args.requests) == 1 else args.requests
    litserve_env = dict(item.split("=", 1) for item in args.litserve_env)
    print(f"\nLitServe settings for the rest: {litserve_env} (and the server's defaults, "
          "bench/candidates/litserve_server.py)")
    prefix = f"byoc-cand-{os.getpid()}"
    stacks = ["ours", "litserve"]
    urls = {s: f"http://127.0.0.1:{args.port + i}" for i, s in enumerate(stacks)}
    try:
        serve_compare.start(f"{prefix}-ours", args.base, model_dir, args.port, args.cpus, {})
        start_litserve(f"{prefix}-litserve", model_dir, args.port + 1, args.cpus, litserve_env)
        for stack in stacks:
            serve_compare.wait_answering(f"{prefix}-{stack}", urls[stack], bodies[0], 300)
        print(f"\nload: --cpus {args.cpus}, {len(bodies)} real JPEGs, requests per level "
              f"{dict(zip(args.concurrency, counts))}, {args.rounds} rounds interleaved")
        # no concurrent warm-up at the top level here: these figures were measured without one
        results = serve_compare.measure_rounds(prefix, stacks, urls, bodies, counts, args, warm_at_top=False,
                                               note=load)
        if args.batch_trials:
            print("\none corrupt JPEG among good ones, sent together (statuses over all trials):")
        for stack in stacks if args.batch_trials else []:
            serve_compare.only_running(prefix, stacks, stack)
            counts_by = statuses_with_one_corrupt(urls[stack], bodies, args.batch_group, args.batch_trials)
            text = ", ".join(f"{which} {status}: {n}" for (which, status), n in sorted(counts_by.items(), key=str))
            print(f"  {stack:>9}: {args.batch_trials} trials of {args.batch_group} requests: {text}  {load()}",
                  flush=True)
        serve_compare.only_running(prefix, stacks, "")
        for stack in stacks:
            print("  " + sh(DOCKER, "stats", "--no-stream", "--format", "{{.Name}} mem {{.MemUsage}}",
                            f"{prefix}-{stack}").strip())
    finally:
        for stack in stacks:
            remove(f"{prefix}-{stack}")

    print(f"\n| stack | concurrency | ok | errors | req/s mean (range) | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for stack in stacks:
        for c in args.concurrency:
            rows = results[(stack, c)]
            rps = [row[2] for row in rows]
            print(f"| {stack} | {c} | {sum(r[0] for r in rows)} | {sum(r[1] for r in rows)} | "
                  f"{statistics.mean(rps):.1f} ({min(rps):.1f}-{max(rps):.1f}) | "
                  f"{statistics.mean(r[3] for r in rows):.1f} | {statistics.mean(r[4] for r in rows):.1f} |")
    for c in args.concurrency:
        ours = statistics.mean(r[2] for r in results[("ours", c)])
        lit = statistics.mean(r[2] for r in results[("litserve", c)])
        print(f"c={c}: litserve / ours req/s = {lit / ours:.2f}")

    if not args.cold_rounds:
        return
    cold = {}
    body = bodies[0]
    photo = HERE.parent / "samples" / "photos" / "brick.jpg"
    print(f"\n`docker run` to the first answer (bench/cold_start.py's clock), {args.cold_rounds} rounds")
    for limit in args.limits:
        for r in range(1, args.cold_rounds + 1):
            for stack in ["floor", "ours", "litserve"]:
                if stack == "floor":
                    seconds = cold_start.floor(args.base, model_dir, photo, limit)
                else:
                    seconds = cold_start.first_answer(args.base if stack == "ours" else LITSERVE_IMAGE,
                                                      model_dir, body, limit,
                                                      {} if stack == "ours" else litserve_env)
                cold.setdefault((limit, stack), []).append(seconds)
                print(f"  {limit:>6} round {r} {stack:>9}: {seconds:.2f} s  {load()}", flush=True)
    print("\n| limit | stack | best s | median s | best / floor's best |")
    print("| --- | --- | ---: | ---: | ---: |")
    for limit in args.limits:
        floor = min(cold[(limit, "floor")])
        for stack in ["floor", "ours", "litserve"]:
            runs = cold[(limit, stack)]
            print(f"| {limit} | {stack} | {min(runs):.2f} | {statistics.median(runs):.2f} | {min(runs) / floor:.2f}x |")


# ---------------------------------------------------------------------------------------- Ray Serve

def du_mb(path: Path) -> float:
    return int(sh("du", "-sk", str(path)).split()[0]) / 1024


def ray_probe(venv: Path, args: list, timeout_s: float) -> dict:
    """bench/candidates/ray_probe.py in a new network namespace (loopback only)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
           "RAY_SERVE_PROXY_LOCATION": "HeadOnly", "BENCH_T0": repr(time.monotonic())}
    env.pop("VIRTUAL_ENV", None)
    script = "ip link set lo up && exec \"$0\" \"$@\""
    out = subprocess.run(["unshare", "-n", "--", "sh", "-c", script, str(venv / "bin" / "python"),
                          str(CANDIDATES / "ray_probe.py"), *args],
                         capture_output=True, text=True, env=env, timeout=timeout_s)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"ray_probe {args} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def ray_part(args, model_dir: Path) -> None:
    venv = Path(args.ray_venv)
    if not str(venv.resolve()).startswith("/tmp/"):
        sys.exit("--ray-venv must be under /tmp (a throwaway venv)")
    if venv.exists() and not args.ray_reuse:
        shutil.rmtree(venv)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    if not venv.exists():
        subprocess.run([shutil.which("python3") or "python3", "-m", "venv", str(venv)], check=True)
        before = du_mb(site)
        t0 = time.monotonic()
        # This machine's pip.conf adds local indexes (warnings only); the CA bundle stays.
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull,
               "PIP_CERT": os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")}
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        f"ray[serve]=={args.ray_version}"], check=True, env=env)
        print(f"\npip install ray[serve]=={args.ray_version}: {time.monotonic() - t0:.0f} s; site-packages "
              f"{before:.0f} MB -> {du_mb(site):.0f} MB (added {du_mb(site) - before:.0f} MB)  {load()}")
    else:
        print(f"\nray venv reused: site-packages {du_mb(site):.0f} MB")
    frozen = sh(str(venv / "bin" / "pip"), "list", "--format=freeze").split()
    print(f"{len(frozen)} packages in the ray venv: {' '.join(frozen)}")
    biggest = sh("sh", "-c", f"du -sk {site}/* | sort -rn | head -8")
    print("largest in site-packages (MB): " + ", ".join(
        f"{Path(p).name} {int(k) / 1024:.0f}" for k, p in (line.split("\t") for line in biggest.splitlines())))

    print("\nray.init + serve.run, trivial deployment, in its own network namespace (host: "
          f"{os.cpu_count()} cores)")
    for r in range(1, args.ray_rounds + 1):
        res = ray_probe(venv, ["trivial", "8000"], 300)
        mem = res["memory"]
        print(f"  round {r}: import ray+serve {res['import_s']:.1f} s, ray.init done {res['init_s']:.1f} s, "
              f"serve.run done {res['serve_run_s']:.1f} s, first answer {res['first_answer_s']:.1f} s; "
              f"{mem['processes']} processes, RSS {mem['rss_mb']:.0f} MB (PSS {mem['pss_mb']:.0f} MB)  {load()}",
              flush=True)
        if r == 1:
            print(f"    processes: {mem['names']}")
            print(f"    listening (inside the namespace): {res['listeners']}")

    if args.ray_load:
        # torch, torchvision, PIL from our test venv, after the ray venv's own packages.
        pth = site / "zz-byoc-bench-torch.pth"
        pth.write_text(sh(str(HERE.parent / ".venv" / "bin" / "python"), "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
        try:
            res = ray_probe(venv, ["resnet", "8000", str(model_dir), str(args.ray_requests), "8", "32"], 600)
        finally:
            pth.unlink()
        mem = res["memory"]
        print(f"\nworkshop ResNet-18 through Ray Serve (2 replicas x 1 thread, batch 4 / 1 ms), host: first "
              f"answer {res['first_answer_s']:.1f} s; {mem['processes']} processes, RSS {mem['rss_mb']:.0f} MB "
              f"(PSS {mem['pss_mb']:.0f} MB) after the load")
        for c, row in res["load"].items():
            print(f"  c={c}: ok {row['ok']} errors {row['errors']} {row['rps']:.1f} req/s p50 {row['p50_ms']:.1f} ms "
                  f"p99 {row['p99_ms']:.1f} ms  load {row['loadavg'][0]:.2f}")


def main():
    # A plain kill still removes the containers (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["litserve", "ray"], default=["litserve", "ray"])
    parser.add_argument("--base", default="pytorch-byoc-serve:cpu", help="our image, and the LitServe image's base")
    parser.add_argument("--litserve-version", default="0.2.19")
    parser.add_argument("--no-build", action="store_true", help="use the LitServe image already built")
    parser.add_argument("--tune", action="store_true", help="first try a few LitServe settings")
    parser.add_argument("--tune-requests", type=int, default=200)
    parser.add_argument("--litserve-env", nargs="*", default=["LS_FAST_QUEUE=1"],
                        help="KEY=VALUE for the LitServe server in the load, batch and cold-start runs "
                             "(default: its ZeroMQ queue, the best of --tune here)")
    parser.add_argument("--cpus", default="2")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, nargs="+", default=[200, 400, 400])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=120)
    parser.add_argument("--batch-group", type=int, default=8, help="requests sent together, one corrupt")
    parser.add_argument("--batch-trials", type=int, default=5, help="0: no corrupt-JPEG test")
    parser.add_argument("--limits", nargs="+", default=["2:", "1:2g"], help="cold start, CPUS:MEMORY")
    parser.add_argument("--cold-rounds", type=int, default=2, help="0: no cold starts")
    parser.add_argument("--port", type=int, default=18280, help="first host port (loopback)")
    parser.add_argument("--ray-version", default="2.60.0")
    parser.add_argument("--ray-venv", default="/tmp/byoc-ray-venv")
    parser.add_argument("--ray-reuse", action="store_true", help="keep an existing venv (no install figures)")
    parser.add_argument("--ray-rounds", type=int, default=2)
    parser.add_argument("--ray-load", action="store_true", help="also the workshop ResNet-18 through Ray Serve")
    parser.add_argument("--ray-requests", type=int, default=300)
    args = parser.parse_args()
    if len(args.requests) not in (1, len(args.concurrency)):
        parser.error("--requests: one number, or one per --concurrency")
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} host cores, {load()}", flush=True)
    bodies = serve_compare.real_jpegs()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="byoc-cand-") as tmp:
        model_dir = serve_compare.build_model_dirs(Path(tmp))["workshop"]
        if "litserve" in args.parts:
            litserve_part(args, model_dir, bodies)
        if "ray" in args.parts:
            ray_part(args, model_dir)
    print(f"\ntotal {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
