"""Load benchmark of a running serving container: req/s and latency at several
concurrencies, with real JPEG photos, one keep-alive connection per client.

    python bench/serve_load.py --url http://127.0.0.1:8080 --requests 600 --concurrency 1 8 32

Prints one line per concurrency: requests, errors, req/s, p50 and p99 latency (ms).
Bounded in count and time; talks only to the URL given (use a loopback address).
"""
import argparse
import glob
import http.client
import os
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor


def photos():
    """Real JPEGs: the demo's query photos plus foolbox's ImageNet samples when installed."""
    here = os.path.dirname(os.path.abspath(__file__))
    files = sorted(glob.glob(os.path.join(here, "..", "samples", "photos", "*.jpg")))
    try:
        import importlib.util
        spec = importlib.util.find_spec("foolbox")
        if spec:
            files += sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "data", "imagenet_*.jpg")))
    except ImportError:
        pass
    return [open(f, "rb").read() for f in files]


def run(url, bodies, total, concurrency, deadline_s):
    target = urllib.parse.urlsplit(url)
    latencies, errors = [], [0]
    lock = threading.Lock()
    counter = iter(range(total))
    stop_at = time.monotonic() + deadline_s

    def client():
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/invocations", body=bodies[i % len(bodies)],
                             headers={"Content-Type": "image/jpeg", "Accept": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            elapsed = time.perf_counter() - t0
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1
        conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(client)
    wall = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")
    return len(latencies), errors[0], len(latencies) / wall, pick(0.50), pick(0.99)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--requests", type=int, default=600, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=300, help="per level, at most")
    args = parser.parse_args()
    bodies = photos()
    run(args.url, bodies, args.warmup, 1, 60)
    print(f"{len(bodies)} real JPEG photos, {args.requests} requests per level")
    print(f"{'concurrency':>11} {'ok':>6} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for c in args.concurrency:
        ok, errors, rps, p50, p99 = run(args.url, bodies, args.requests, c, args.max_seconds)
        print(f"{c:>11} {ok:>6} {errors:>6} {rps:>8.1f} {p50:>8.1f} {p99:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
