"""Ray Serve, for bench/engine_candidates.py only: run with the throwaway venv's python, in a
network namespace of its own (engine_candidates.py starts it under `unshare -n`, loopback up),
so that no listener Ray opens can be reached from outside this process tree.

    python ray_probe.py trivial PORT
    python ray_probe.py resnet PORT MODEL_DIR REQUESTS CONCURRENCY...

BENCH_T0 (environment): the parent's time.monotonic() just before it started this process;
"first answer" is counted from it (CLOCK_MONOTONIC is one clock for all processes).
Prints one JSON object on its last line.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

T0 = float(os.environ.get("BENCH_T0", time.monotonic()))


def descendants(root: int) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def memory(pids: list[int]) -> dict:
    """RSS and PSS (kB summed over the processes; PSS splits shared pages) and their names."""
    rss = pss = 0
    names = {}
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Rss:"):
                    kb = int(line.split()[1])
                    rss += kb
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
            comm = open(f"/proc/{pid}/comm").read().strip()
            names[comm] = names.get(comm, 0) + 1
        except OSError:
            continue
    return {"processes": len(pids), "rss_mb": rss / 1024, "pss_mb": pss / 1024, "names": names}


def listeners() -> list[str]:
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
    return sorted({line.split()[3] for line in out.splitlines() if line.strip()})


def wait_answer(url: str, body: bytes, content_type: str, timeout_s: float = 300) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
                return time.monotonic() - T0
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"no answer from {url}")


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    import ray
    from ray import serve
    t_import = time.monotonic() - T0
    ray.init(num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
             _node_ip_address="127.0.0.1", logging_level="WARNING", log_to_driver=False)
    t_init = time.monotonic() - T0
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/invocations"
    result = {"mode": mode, "import_s": t_import, "init_s": t_init}

    if mode == "trivial":
        @serve.deployment
        class Hello:
            async def __call__(self, request):
                return {"ok": True}

        serve.run(Hello.bind(), route_prefix="/invocations")
        result["serve_run_s"] = time.monotonic() - T0
        result["first_answer_s"] = wait_answer(url, b"{}", "application/json")
    else:
        model_dir, total, levels = sys.argv[3], int(sys.argv[4]), [int(c) for c in sys.argv[5:]]
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import serve_compare  # the photos; imports only the stdlib and serve_load at the top
        import serve_load

        @serve.deployment(num_replicas=os.cpu_count(), ray_actor_options={"num_cpus": 1},
                          max_ongoing_requests=16)
        class Workshop:
            """The workshop inference.py, one torch thread per replica, our CPU batch settings."""

            def __init__(self, model_dir):
                import importlib.util
                import torch
                torch.set_num_threads(1)
                path = os.path.join(model_dir, "code", "inference.py")
                spec = importlib.util.spec_from_file_location("inference", path)
                self.user = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(self.user)
                self.model = self.user.model_fn(model_dir)
                self.torch = torch

            @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.001)
            async def infer(self, bodies):
                x = self.torch.cat([self.user.input_fn(body, "image/jpeg") for body in bodies])
                y = self.user.predict_fn(x, self.model)
                return [self.user.output_fn(y[i:i + 1], "application/json") for i in range(len(bodies))]

            async def __call__(self, request):
                from starlette.responses import Response
                return Response(await self.infer(await request.body()), media_type="application/json")

        bodies = serve_compare.real_jpegs()
        serve.run(Workshop.bind(model_dir), route_prefix="/invocations")
        result["serve_run_s"] = time.monotonic() - T0
        result["first_answer_s"] = wait_answer(url, bodies[0], "image/jpeg")
        serve_load.run(f"http://127.0.0.1:{port}", bodies, 10, 1, 60)
        result["load"] = {}
        for c in levels:
            ok, errors, rps, p50, p99 = serve_load.run(f"http://127.0.0.1:{port}", bodies, total, c, 300)
            result["load"][c] = {"ok": ok, "errors": errors, "rps": rps, "p50_ms": p50, "p99_ms": p99,
                                 "loadavg": os.getloadavg()}

    time.sleep(2)  # let the processes started for the first answer settle before counting them
    result["memory"] = memory(descendants(os.getpid()))
    result["listeners"] = listeners()
    serve.shutdown()
    ray.shutdown()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    main()
