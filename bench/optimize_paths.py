"""CPU inference paths for the serving default (issue 19, "Off TorchScript"), measured side by side.

    .venv/bin/python bench/optimize_paths.py --work /tmp/op --json /tmp/op.json    # all of it
    .venv/bin/python bench/optimize_paths.py --paths steady --skip compiler,isa,toolchain --work /tmp/op
    .venv/bin/python bench/optimize_paths.py --paths compile --compile-threads 2 --skip compiler,isa,toolchain
    .venv/bin/python bench/optimize_paths.py --models resnet18 --threads 1 --skip isa,toolchain
    .venv/bin/python bench/optimize_paths.py --models "" --check-model mobilenet_v3_large
        --skip compiler,toolchain --qemu /tmp/qemu/usr/bin/qemu-x86_64-static   (one command)
      (qemu: `apt-get download qemu-user-static && dpkg -x qemu-user-static_*.deb /tmp/qemu`)

The first took 28-30 min on the 2-core machine at load average 3-8 from other work (compiles and
AOTI builds are most of it); --models, --threads and --skip make shorter runs.

Models (eval mode, random weights from a fixed seed; BatchNorm statistics set from one batch of
random inputs, so that activations keep a trained network's scale):
  resnet18            torchvision resnet18, 3x224x224
  efficientnet_lite0  timm 'efficientnet_lite0' (the efficientnet_lite_pytorch package is not used)
  mobilenet_v3_large  torchvision mobilenet_v3_large, 3x224x224
  transformer         torch.nn.TransformerEncoder: 4 layers, d_model 256, 8 heads, ffn 1024,
                      batch-first, sequence 128 (under inference_mode eager takes PyTorch's fused
                      encoder-layer kernel, and trace/compile keep it as one op)

Paths, each in its own process per thread count (thread count, compile caches and the CPU
capability are process-wide):
  eager      the model as is; every path below runs under torch.inference_mode
  freeze     torch.jit.trace + torch.jit.freeze (traced at batch 1)
  freeze+ofi trace + freeze + torch.jit.optimize_for_inference (serve/optimize.py keeps the faster)
  compile    torch.compile (inductor, default mode) with a fresh TORCHINDUCTOR_CACHE_DIR and TMPDIR
             (inductor keeps precompiled headers there): first call at batch 1, then at batch 4 (a
             recompile, the batch dimension now dynamic); then a second process on the same cache
             ("warm"), as a serving worker restarting with a persistent cache. Inductor's C++ kernels
             are fixed to the thread count at compile time, so each of --compile-threads (default 1,
             one worker per core being the serving default) is a compile of its own
  aoti       torch.export.export (batch dimension dynamic, 1..64) + aoti_compile_and_package to a
             .pt2, built once with TORCHINDUCTOR_CPP_DYNAMIC_THREADS=1 (the trainer's export cannot
             know a serving worker's thread count), loaded by torch._inductor.aoti_load_package in
             a fresh process per thread count; for --check-model also a package at inductor's
             default (kernels fixed to 1 thread): "aoti (static threads)"
  steady     (only when --paths names it) eager, freeze, freeze+ofi, compile (from the warm
             cache of the compile path) and aoti (the package above) in ONE process per thread
             count, timed in the same interleaved rounds: the fairest speed comparison on a
             machine whose load changes. It uses the artifacts in --work, so it can follow an
             earlier run: --paths steady --work THAT_RUN'S_DIR
Per path: median ms per call at batch 1 and 4, timed in interleaved rounds with eager in the same
process (the "vs eager" columns, robust to a change in the machine's load; --seconds of calls per
path and batch size), the start cost, and the max abs difference from eager on 3 distinct random
inputs per batch size (next to the largest |eager output|, for scale).

Then, on --check-model at 1 thread:
  compiler  the AOTI package loaded and run, torch.compile cold and warm, in a process whose PATH
            has no compiler (CC/CXX unset); torch.compile and AOTI packaging with Python.h hidden
            (sysconfig's include path pointed at an empty folder), as Debian's python3 without
            python3-dev
  isa       which vector ISA inductor picks here; packages built for the host's best ISA, with
            ATEN_CPU_CAPABILITY=avx2 (inductor's avx2 kernels) and with that plus
            TORCHINDUCTOR_CPP_MARCH=x86-64-v3; AVX-512 instructions in each .so (objdump); each run
            as is and with ATen's and oneDNN's kernels held to avx2 / to no vector ISA; with
            --qemu PATH_TO_qemu-x86_64 also on an emulated CPU without AVX-512 (slow: minutes)
  toolchain what `apt-get install --no-install-recommends g++` (and python3-dev) adds to a Debian
            image with the serving image's runtime packages (python3 python3-venv ca-certificates
            tini): `apt-get -s` against the dpkg status of --base-image, sizes from apt-cache
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MODELS = ("resnet18", "efficientnet_lite0", "mobilenet_v3_large", "transformer")
BATCHES = (1, 4)
DIFF_INPUTS = 3
EXPORT_MAX_BATCH = 64
RUNTIME_PACKAGES = ("python3", "python3-venv", "ca-certificates", "tini")  # docker/runtime/install.sh
DYNAMIC_THREADS = {"TORCHINDUCTOR_CPP_DYNAMIC_THREADS": "1"}
AVX512_RE = re.compile(r"%zmm\d|%k[1-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b")


# ------------------------------------------------------------------ in the worker processes
def build_model(name: str):
    import torch

    torch.manual_seed(0)
    if name == "resnet18":
        import torchvision
        model = torchvision.models.resnet18()
    elif name == "mobilenet_v3_large":
        import torchvision
        model = torchvision.models.mobilenet_v3_large()
    elif name == "efficientnet_lite0":
        import timm
        model = timm.create_model("efficientnet_lite0", pretrained=False)
    elif name == "transformer":
        layer = torch.nn.TransformerEncoderLayer(256, 8, dim_feedforward=1024, batch_first=True)
        model = torch.nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
    else:
        raise SystemExit(f"unknown model {name}")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:   # statistics of real activations: default ones (0, 1) blow up through the layers
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        with torch.no_grad():
            model(make_input(name, 8, seed=1))
    return model.eval()


def make_input(name: str, batch: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 128, 256) if name == "transformer" else (batch, 3, 224, 224)
    return torch.randn(shape, generator=gen)


def latencies_ms(fns: dict, x, seconds: float, rounds: int = 5) -> dict:
    """Median ms per call of each fn, timed in interleaved rounds in this process so that a
    change in the machine's load falls on all of them: 3 warm-up calls each, then in each
    round about seconds / rounds of calls of each (at least 3)."""
    n = {}
    for name, fn in fns.items():
        for _ in range(3):
            fn(x)
        t = time.perf_counter()
        fn(x)
        n[name] = max(3, int(seconds / rounds / max(time.perf_counter() - t, 1e-6)))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(n[name]):
                t = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def compare(fn, eager, name: str, inputs: int = DIFF_INPUTS) -> dict:
    """Max abs difference of fn from eager on distinct inputs of each batch size."""
    worst, scale = 0.0, 0.0
    for b in BATCHES:
        for i in range(inputs):
            x = make_input(name, b, seed=100 + 10 * b + i)
            ref, got = eager(x), fn(x)
            worst = max(worst, (got - ref).abs().max().item())
            scale = max(scale, ref.abs().max().item())
    return {"diff": worst, "scale": scale}


def run_paths(fns: dict, eager, name: str, seconds: float) -> dict:
    """For each path: its difference from eager, and its latency next to eager's."""
    out = {p: compare(fn, eager, name) for p, fn in fns.items() if p != "eager"}
    out.setdefault("eager", {"diff": 0.0, "scale": compare(eager, eager, name)["scale"]})
    for p in out:
        out[p]["lat"], out[p]["eager_lat"] = {}, {}
    for b in BATCHES:
        lat = latencies_ms({"eager": eager, **fns}, make_input(name, b, seed=7), seconds)
        for p in out:
            out[p]["lat"][str(b)] = lat[p]
            out[p]["eager_lat"][str(b)] = lat["eager"]
    return out


def first_calls(fn, name: str) -> dict:
    """Seconds of the first call at each batch size (compiles happen here)."""
    took = {}
    for b in BATCHES:
        x = make_input(name, b, seed=3)
        t = time.perf_counter()
        fn(x)
        took[str(b)] = time.perf_counter() - t
    return took


def hide_python_headers() -> str:
    """Point sysconfig's include path at an empty folder, as Python without python3-dev."""
    import sysconfig

    empty = tempfile.mkdtemp(prefix="no-python-h-")
    real = sysconfig.get_path

    def get_path(name, *args, **kwargs):
        return empty if name == "include" else real(name, *args, **kwargs)

    sysconfig.get_path = get_path
    return empty


def worker(a) -> dict:
    import warnings

    import torch

    warnings.simplefilter("ignore")   # jit's FutureWarnings: known, and the subject of this bench
    torch.set_num_threads(a.threads)
    if a.no_python_h:
        hide_python_headers()
    res = {"compilers_on_path": [c for c in ("cc", "gcc", "g++", "c++", "clang", "clang++")
                                 if shutil.which(c)],
           "capability": torch.backends.cpu.get_cpu_capability()}
    t = time.perf_counter()
    model = build_model(a.model)
    res["build_s"] = time.perf_counter() - t
    eager = model
    with torch.inference_mode():
        if a.role == "eager_jit":
            example = make_input(a.model, 1, seed=3)
            with torch.inference_mode(False), torch.no_grad():   # as serve/optimize.py does
                t = time.perf_counter()
                frozen = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
                freeze_s = time.perf_counter() - t
                t = time.perf_counter()
                ofi = torch.jit.optimize_for_inference(
                    torch.jit.freeze(torch.jit.trace(model, example, check_trace=False)))
                ofi_s = time.perf_counter() - t
            res.update(run_paths({"freeze": frozen, "freeze+ofi": ofi}, eager, a.model, a.seconds))
            res["freeze"]["start"] = f"trace+freeze {freeze_s:.2f} s"
            res["freeze+ofi"]["start"] = f"trace+freeze+ofi {ofi_s:.2f} s"
        elif a.role == "steady":
            # every path in this one process, timed in the same interleaved rounds: the fairest
            # comparison on a machine whose load changes (artifacts from the paths above)
            example = make_input(a.model, 1, seed=3)
            with torch.inference_mode(False), torch.no_grad():
                fns = {"freeze": torch.jit.freeze(torch.jit.trace(model, example, check_trace=False)),
                       "freeze+ofi": torch.jit.optimize_for_inference(
                           torch.jit.freeze(torch.jit.trace(model, example, check_trace=False)))}
            if a.with_compile:
                fns["compile"] = torch.compile(model)
            if a.package:
                fns["aoti"] = torch._inductor.aoti_load_package(a.package)
            for fn in fns.values():
                first_calls(fn, a.model)   # compiles (from the warm cache) before any timing
            res.update(run_paths(fns, eager, a.model, a.seconds))
        elif a.role == "compile":
            kwargs = {"mode": a.mode} if a.mode else {}
            fn = torch.compile(model, **kwargs)
            res["first_call_s"] = first_calls(fn, a.model)
            if a.seconds > 0:
                res.update(run_paths({"path": fn}, eager, a.model, a.seconds)["path"])
            else:   # a check: the answer, not the speed
                res.update(compare(fn, eager, a.model))
        elif a.role == "aoti_package":
            batch = torch.export.Dim("batch", min=1, max=EXPORT_MAX_BATCH)
            # an example batch of 2: at 1, export specialises the dimension to the constant 1
            example = make_input(a.model, 2, seed=3)
            with torch.inference_mode(False), torch.no_grad():
                t = time.perf_counter()
                ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
                res["export_s"] = time.perf_counter() - t
                t = time.perf_counter()
                torch._inductor.aoti_compile_and_package(ep, package_path=a.package)
                res["package_s"] = time.perf_counter() - t
            res["package_bytes"] = os.path.getsize(a.package)
        elif a.role == "aoti_load":
            t = time.perf_counter()
            runner = torch._inductor.aoti_load_package(a.package)
            res["load_s"] = time.perf_counter() - t
            if a.seconds > 0:
                res["first_call_s"] = first_calls(runner, a.model)
                res.update(run_paths({"path": runner}, eager, a.model, a.seconds)["path"])
            else:   # a check, maybe under an emulator: the answers only
                res.update(compare(runner, eager, a.model, a.diff_inputs))
        elif a.role == "isa":
            from torch._inductor import cpu_vec_isa
            res["inductor_isa"] = str(cpu_vec_isa.pick_vec_isa())
            res["valid_isas"] = [str(i) for i in cpu_vec_isa.valid_vec_isa_list()]
    return res


# ------------------------------------------------------------------ the orchestrator
class Runner:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        self.log = open(os.path.join(self.work, "workers.log"), "a")

    def run(self, role: str, model: str, threads: int, *, env=None, seconds=None, package=None,
            mode=None, no_python_h=False, prefix=(), diff_inputs=DIFF_INPUTS, with_compile=False,
            timeout=900) -> dict:
        cmd = [*prefix, sys.executable, os.path.abspath(__file__), "--worker", role, "--models", model,
               "--threads", str(threads),
               "--seconds", str(self.args.seconds if seconds is None else seconds)]
        if package:
            cmd += ["--package", package]
        if mode:
            cmd += ["--mode", mode]
        if no_python_h:
            cmd += ["--no-python-h"]
        if with_compile:
            cmd += ["--with-compile"]
        if diff_inputs != DIFF_INPUTS:
            cmd += ["--diff-inputs", str(diff_inputs)]
        full_env = dict(os.environ)
        full_env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        for k, v in (env or {}).items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
        self.log.write(f"\n=== {' '.join(cmd)}  env={env}\n")
        self.log.flush()
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout} s", "wall_s": timeout}
        wall = time.perf_counter() - t
        self.log.write(proc.stdout + proc.stderr)
        self.log.flush()
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                out = json.loads(line[7:])
                out.update(ok=True, wall_s=wall)
                return out
        err = first_error((proc.stderr or proc.stdout).strip().splitlines())
        if proc.returncode < 0:
            err = f"killed by signal {-proc.returncode} " + err
        return {"ok": False, "error": err.strip()[:300], "rc": proc.returncode, "wall_s": wall}

    def fresh(self, name: str) -> dict:
        """A new inductor cache dir and TMPDIR (precompiled headers go to TMPDIR)."""
        cache = os.path.join(self.work, name)
        shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(os.path.join(cache, "tmp"))
        return {"TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"),
                "TMPDIR": os.path.join(cache, "tmp")}


def first_error(lines: list[str]) -> str:
    """The exception's own line(s) from a traceback: the last 'XError: ...' line not in an
    indented frame, with the line after it when it ends with 'raised:'."""
    for i in range(len(lines) - 1, -1, -1):
        ln = lines[i]
        if not ln.startswith(" ") and re.search(r"(Error|Exception|Failed|error)\b.*:", ln):
            if ln.rstrip().endswith(":") and i + 1 < len(lines):
                ln += " " + lines[i + 1].strip()
            return ln
    return lines[-1] if lines else ""


def no_compiler_env(work: str) -> dict:
    empty = os.path.join(work, "empty-bin")
    os.makedirs(empty, exist_ok=True)
    return {"PATH": empty, "CC": None, "CXX": None}


def avx512_count(package: str, work: str) -> int | None:
    """AVX-512 instructions (zmm, opmask, xmm/ymm16-31 operands) in the package's .so files."""
    objdump = shutil.which("objdump")
    if not objdump:
        return None
    out = os.path.join(work, "unzip-" + os.path.basename(package))
    shutil.rmtree(out, ignore_errors=True)
    import zipfile
    with zipfile.ZipFile(package) as z:
        names = [n for n in z.namelist() if n.endswith(".so")]
        z.extractall(out, names)
    count = 0
    for n in names:
        dis = subprocess.run([objdump, "-d", "--no-show-raw-insn", os.path.join(out, n)],
                             capture_output=True, text=True).stdout
        count += sum(1 for line in dis.splitlines() if AVX512_RE.search(line))
    shutil.rmtree(out, ignore_errors=True)
    return count


def package_metadata(package: str) -> dict:
    import zipfile
    with zipfile.ZipFile(package) as z:
        meta = [n for n in z.namelist() if n.endswith("_metadata.json")]
        return json.loads(z.read(meta[0])) if meta else {}


def fmt_ms(v) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) else "-"


def main_table(results: list[dict]) -> list[str]:
    lines = ["| model | path | threads | batch 1 ms | batch 4 ms | b1 vs eager | b4 vs eager | "
             "start cost | max abs diff vs eager (max abs out) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in results:
        if not r.get("ok", True) or "lat" not in r:
            lines.append(f"| {r['model']} | {r['path']} | {r['threads']} | - | - | - | - | "
                         f"{r.get('start', '')} | FAILED: {r.get('error', '')[:160]} |")
            continue
        lat, e = r["lat"], r["eager_lat"]
        sp = [f"{e[b] / lat[b]:.2f}x" for b in ("1", "4")]
        lines.append(f"| {r['model']} | {r['path']} | {r['threads']} | {fmt_ms(lat['1'])} | "
                     f"{fmt_ms(lat['4'])} | {sp[0]} | {sp[1]} | {r.get('start', '')} | "
                     f"{r['diff']:.1e} ({r['scale']:.3g}) |")
    return lines


PATH_ORDER = ("eager", "freeze", "freeze+ofi", "compile", "aoti", "aoti (static threads)")


def load_avg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def aoti_row(R: Runner, model: str, thr: int, built: dict, pkg: str, tag: str) -> dict:
    row = {"model": model, "path": tag, "threads": thr}
    if not built["ok"]:
        return {**row, "ok": False, "error": "package: " + built["error"]}
    loaded = R.run("aoti_load", model, thr, package=pkg)
    if not loaded["ok"]:
        return {**row, "ok": False, "error": "load: " + loaded["error"]}
    start = (f"export {built['export_s']:.1f} + package {built['package_s']:.1f} s; "
             f"load {loaded['load_s']:.2f} s; {built['package_bytes'] / 2**20:.1f} MiB")
    return {**row, **loaded, "start": start, "package": built}


def bench_models(R: Runner, args, emit) -> list[dict]:
    rows = []
    for model in args.models:
        t0 = time.perf_counter()
        if "jit" in args.paths:
            for thr in args.threads:
                ej = R.run("eager_jit", model, thr)
                if not ej["ok"]:
                    rows.append({"model": model, "path": "eager", "threads": thr, **ej})
                    continue
                for p in ("eager", "freeze", "freeze+ofi"):
                    rows.append({"model": model, "path": p, "threads": thr, "start": "-", **ej[p]})

        for mode in args.compile_modes if "compile" in args.paths else ():
            tag = "compile" if mode == "default" else f"compile[{mode}]"
            mode_arg = None if mode == "default" else mode
            for i, thr in enumerate(args.compile_threads):
                env = R.fresh(f"cache-{model}-{thr}t-{mode}")
                # cold then warm at the first thread count; at the others, one cold process
                warm_too = i == 0
                cold = R.run("compile", model, thr, env=env, mode=mode_arg, seconds=0 if warm_too else None)
                warm = R.run("compile", model, thr, env=env, mode=mode_arg) if cold["ok"] and warm_too else None
                if cold["ok"] and (warm is None or warm["ok"]):
                    c = cold["first_call_s"]
                    start = f"cold b1 {c['1']:.1f} + b4 {c['4']:.1f} s"
                    if warm:
                        w = warm["first_call_s"]
                        start += f"; warm b1 {w['1']:.1f} + b4 {w['4']:.1f} s"
                    rows.append({"model": model, "path": tag, "threads": thr, **(warm or cold),
                                 "start": start, "cold": cold})
                else:
                    bad = cold if not cold["ok"] else warm
                    rows.append({"model": model, "path": tag, "threads": thr, "start": "",
                                 "ok": False, "error": bad["error"]})
                if mode == "default" and warm_too and model == args.check_model:
                    R.checks["compile_cache_env"] = env

        if "aoti" in args.paths:
            # One package for every thread count: the trainer's export cannot know how many
            # threads a serving worker will have, and by default inductor's kernels are fixed
            # to the thread count at build time.
            pkg = os.path.join(R.work, f"{model}.pt2")
            built = R.run("aoti_package", model, args.threads[0], package=pkg,
                          env={**R.fresh(f"aoti-{model}"), **DYNAMIC_THREADS})
            for thr in args.threads:
                rows.append(aoti_row(R, model, thr, built, pkg, "aoti"))
            if model == args.check_model and built["ok"]:
                R.checks["package"], R.checks["package_built"] = pkg, built
                # the same at inductor's default (kernels fixed to 1 thread); built with
                # Python.h hidden, which also shows whether packaging needs python3-dev
                spkg = os.path.join(R.work, f"{model}-static-nopyh.pt2")
                sbuilt = R.run("aoti_package", model, 1, package=spkg, env=R.fresh(f"aoti-{model}-static"),
                               no_python_h=True)
                R.checks["nopyh_package"] = sbuilt
                rows.append(aoti_row(R, model, 1, sbuilt, spkg, "aoti (static threads)"))
        if "steady" in args.paths:
            pkg = os.path.join(R.work, f"{model}.pt2")
            for thr in args.threads:
                cache = os.path.join(R.work, f"cache-{model}-{thr}t-default")
                env = {"TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"),
                       "TMPDIR": os.path.join(cache, "tmp")} if os.path.isdir(cache) else {}
                r = R.run("steady", model, thr, env=env, with_compile=bool(env),
                          package=pkg if os.path.exists(pkg) else None)
                if not r["ok"]:
                    rows.append({"model": model, "path": "steady", "threads": thr, **r})
                    continue
                for p in PATH_ORDER:
                    if p in r:
                        rows.append({"model": model, "path": p, "threads": thr, "start": "-",
                                     "steady": True, **r[p]})
        emit(f"  {model}: {time.perf_counter() - t0:.0f} s, load average now {load_avg()}")
    order = {m: i for i, m in enumerate(args.models)}
    rows.sort(key=lambda r: (order[r["model"]], r["threads"],
                             PATH_ORDER.index(r["path"]) if r["path"] in PATH_ORDER else 99))
    return rows


def compiler_checks(R: Runner, args) -> list[str]:
    m = args.check_model
    nocc = no_compiler_env(R.work)
    lines = ["| check (" + m + ", 1 thread) | result |", "| --- | --- |"]

    def verdict(r):
        if not r["ok"]:
            return f"FAILED ({r['error'][:200]})"
        extra = f", first call b1 {r['first_call_s']['1']:.1f} s" if "first_call_s" in r else ""
        load = f", load {r['load_s']:.2f} s" if "load_s" in r else ""
        return (f"works: max abs diff {r['diff']:.2e}{load}{extra}; compilers on PATH: "
                f"{r['compilers_on_path'] or 'none'}")

    pkg = R.checks.get("package")
    if pkg and os.path.exists(pkg):
        r = R.run("aoti_load", m, 1, package=pkg, env=nocc, seconds=0)
        lines.append(f"| AOTI package: load + forward, no compiler on PATH, CC/CXX unset | {verdict(r)} |")
    r = R.run("compile", m, 1, env={**nocc, **R.fresh("nocc-cold")}, seconds=0, timeout=600)
    lines.append(f"| torch.compile, cold cache, no compiler | {verdict(r)} |")
    warm = R.checks.get("compile_cache_env")
    if warm:
        r = R.run("compile", m, 1, env={**nocc, **warm}, seconds=0, timeout=600)
        lines.append(f"| torch.compile, warm cache (from the run above), no compiler | {verdict(r)} |")
        # the failure above is inductor's probe of the vector ISA, which compiles a test program
        r = R.run("compile", m, 1, env={**nocc, **warm, "TORCHINDUCTOR_VEC_ISA_OK": "1"}, seconds=0,
                  timeout=600)
        lines.append("| torch.compile, warm cache, no compiler, TORCHINDUCTOR_VEC_ISA_OK=1 (skips "
                     f"the ISA probe) | {verdict(r)} |")
    r = R.run("compile", m, 1, env=R.fresh("nopyh-compile"), seconds=0, no_python_h=True, timeout=600)
    lines.append(f"| torch.compile, cold cache, compiler but no Python.h | {verdict(r)} |")
    r = R.checks.get("nopyh_package")
    if r:
        res = (f"works: package {r['package_s']:.1f} s (the 'aoti (static threads)' row's package)"
               if r["ok"] else f"FAILED ({r['error'][:200]})")
        lines.append(f"| AOTI packaging, compiler but no Python.h | {res} |")
    return lines


def isa_checks(R: Runner, args) -> list[str]:
    m = args.check_model
    out = []
    info = R.run("isa", m, 1, seconds=0)
    if info["ok"]:
        out.append(f"- inductor's vector ISA on this host: `{info['inductor_isa']}` "
                   f"(valid here: {', '.join(info['valid_isas'])}); ATen's CPU capability: "
                   f"{info['capability']}")
    builds = {"host best (defaults)": {},
              "ATEN_CPU_CAPABILITY=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
              "ATEN_CPU_CAPABILITY=avx2 + TORCHINDUCTOR_CPP_MARCH=x86-64-v3":
                  {"ATEN_CPU_CAPABILITY": "avx2", "TORCHINDUCTOR_CPP_MARCH": "x86-64-v3"}}
    # a lower-capability CPU, as far as one process can pretend: ATen's kernels and oneDNN's
    # (convolutions, matmuls) held to a lower ISA; inductor's own kernels cannot be
    settings = {"as is": {},
                "ATen avx2, oneDNN AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
                "ATen default, oneDNN SSE41": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}}
    lines = ["| package built with | AOTI_CPU_ISA | AVX-512 instructions in .so | package s | "
             "run with | b1 ms | b4 ms | b1 vs eager | b4 vs eager | max abs diff vs eager (same setting) |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    packages = {}
    for i, (label, env) in enumerate(builds.items()):
        pkg = os.path.join(R.work, f"{m}-isa{i}.pt2")
        if i == 0 and R.checks.get("package"):
            pkg, b = R.checks["package"], R.checks["package_built"]
        else:
            b = R.run("aoti_package", m, 1, env={**env, **DYNAMIC_THREADS, **R.fresh(f"isa{i}")}, package=pkg)
        if not b["ok"]:
            lines.append(f"| {label} | - | - | - | - | - | - | - | - | package FAILED: {b['error'][:150]} |")
            continue
        packages[label] = pkg
        meta = package_metadata(pkg).get("AOTI_CPU_ISA", "?")
        n512 = avx512_count(pkg, R.work)
        # the naive avx2 build: its instruction count is the point, one speed figure will do
        for run_label, run_env in list(settings.items())[:1 if i == 1 else None]:
            r = R.run("aoti_load", m, 1, package=pkg,
                      env={"ATEN_CPU_CAPABILITY": None, "ONEDNN_MAX_CPU_ISA": None, **run_env})
            res = (" | ".join([fmt_ms(r["lat"]["1"]), fmt_ms(r["lat"]["4"]),
                               *(f"{r['eager_lat'][b] / r['lat'][b]:.2f}x" for b in ("1", "4")),
                               f"{r['diff']:.2e}"]) if r["ok"]
                   else f"- | - | - | - | FAILED: {r['error'][:150]}")
            lines.append(f"| {label} | {meta} | {n512} | {b['package_s']:.1f} | {run_label} | {res} |")
    out += [""] + lines
    if args.qemu:
        out += ["", f"On an emulated CPU without AVX-512 (`{args.qemu} -cpu {args.qemu_cpu}`; "
                "speed under emulation means nothing, only whether it runs and agrees):", "",
                "| package built with | result |", "| --- | --- |"]
        for label, pkg in packages.items():
            # one input per batch size: emulation runs some hundred times slower
            r = R.run("aoti_load", m, 1, package=pkg, seconds=0, timeout=1800, diff_inputs=1,
                      prefix=(args.qemu, "-cpu", args.qemu_cpu))
            res = (f"runs: ATen capability {r['capability']}, max abs diff {r['diff']:.2e}" if r["ok"]
                   else f"FAILED: {r['error'][:200]}")
            out.append(f"| {label} | {res} |")
    return out


def toolchain_size(args) -> list[str]:
    """Packages and sizes that g++ (and python3-dev) add to a bookworm image with our runtime set."""
    docker = shutil.which("docker", path="/usr/bin:" + os.environ.get("PATH", ""))
    if not (docker and shutil.which("apt-get")):
        return ["- not measured: needs docker (for the base image's dpkg status) and apt-get"]
    status = os.path.join(args.work, "base-dpkg-status")
    p = subprocess.run([docker, "run", "--rm", "--entrypoint", "cat", args.base_image,
                        "/var/lib/dpkg/status"], capture_output=True, text=True)
    if p.returncode != 0:
        return [f"- not measured: could not read {args.base_image}'s dpkg status: {p.stderr.strip()[:200]}"]
    with open(status, "w") as f:
        f.write(p.stdout)

    def simulate(pkgs) -> set[str]:
        q = subprocess.run(["apt-get", "-s", "-o", f"Dir::State::status={status}", "install",
                            "--no-install-recommends", *pkgs], capture_output=True, text=True)
        # "Inst NAME [old version] (...)" is an upgrade of a package the base already has
        return {name for name, old in re.findall(r"^Inst (\S+) (\[)?", q.stdout, re.M) if not old}

    def sizes(pkgs) -> tuple[int, int]:
        if not pkgs:
            return 0, 0
        show = subprocess.run(["apt-cache", "show", "--no-all-versions", *sorted(pkgs)],
                              capture_output=True, text=True).stdout
        inst = sum(int(v) for v in re.findall(r"^Installed-Size: (\d+)", show, re.M)) * 1024
        dl = sum(int(v) for v in re.findall(r"^Size: (\d+)", show, re.M))
        return inst, dl

    base = simulate(RUNTIME_PACKAGES)
    lines = [f"Base: `{args.base_image}` plus the runtime packages ({' '.join(RUNTIME_PACKAGES)}: "
             f"{len(base)} packages). New packages on top (apt-get -s, --no-install-recommends; "
             "upgrades of packages already there not counted):", "",
             "| adds | packages | installed MiB | download MiB | packages added |",
             "| --- | ---: | ---: | ---: | --- |"]
    for label, extra in (("g++", ["g++"]), ("g++ python3-dev", ["g++", "python3-dev"]),
                         ("python3-dev alone", ["python3-dev"])):
        added = simulate([*RUNTIME_PACKAGES, *extra]) - base
        inst, dl = sizes(added)
        lines.append(f"| {label} | {len(added)} | {inst / 2**20:.0f} | {dl / 2**20:.0f} | "
                     f"{' '.join(sorted(added))} |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seconds", type=float, default=1.5, help="timed calls per latency figure (s)")
    ap.add_argument("--compile-threads", default="1",
                    help="thread counts for torch.compile (each needs its own compile)")
    ap.add_argument("--paths", default="jit,compile,aoti",
                    help="comma list of: jit, compile, aoti, steady (see above)")
    ap.add_argument("--compile-modes", default="default",
                    help="comma list: default, max-autotune-no-cudagraphs")
    ap.add_argument("--check-model", default="resnet18")
    ap.add_argument("--skip", default="", help="comma list of: compiler, isa, toolchain")
    ap.add_argument("--qemu", default="", help="qemu-x86_64 binary: also run the ISA packages on it")
    ap.add_argument("--qemu-cpu", default="Haswell", help="qemu CPU model without AVX-512")
    ap.add_argument("--base-image", default="local/debian:bookworm")
    ap.add_argument("--work", default="")
    ap.add_argument("--json", default="", help="write all raw results here")
    # worker side
    ap.add_argument("--worker", default="")
    ap.add_argument("--package", default="")
    ap.add_argument("--mode", default="")
    ap.add_argument("--no-python-h", action="store_true")
    ap.add_argument("--diff-inputs", type=int, default=DIFF_INPUTS)
    ap.add_argument("--with-compile", action="store_true")
    args = ap.parse_args()

    if args.worker:
        args.role, args.model, args.threads = args.worker, args.models, int(args.threads)
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    args.models = [m for m in args.models.split(",") if m]
    args.threads = [int(t) for t in args.threads.split(",")]
    args.compile_modes = [m for m in args.compile_modes.split(",") if m]
    args.compile_threads = [int(t) for t in args.compile_threads.split(",")]
    args.paths = set(args.paths.split(","))
    skip = set(args.skip.split(","))
    args.work = args.work or tempfile.mkdtemp(prefix="optimize_paths-")
    os.makedirs(args.work, exist_ok=True)
    R = Runner(args)
    R.checks = {}
    report: list[str] = []

    def emit(line=""):
        report.append(line)
        print(line, flush=True)

    import torch
    t_all = time.perf_counter()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    emit(f"# optimize_paths {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    emit(f"- command: `{' '.join([os.path.relpath(sys.executable), *sys.argv])}`")
    emit(f"- torch {torch.__version__}, Python {platform.python_version()}, {cpu}, nproc {os.cpu_count()}, "
         f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    emit(f"- work dir {args.work} (worker logs: workers.log)")
    emit("")

    rows = bench_models(R, args, emit)
    alone = [r for r in rows if not r.get("steady")]
    together = [r for r in rows if r.get("steady")]
    def section(title, lines):
        emit("")
        emit(f"## {title}")
        emit("")
        for ln in lines:
            emit(ln)

    if alone:
        section(f"Paths, each in its own process (median ms per call; load average now {load_avg()})",
                main_table(alone))
    if together:
        section(f"Steady state: all paths in one process per thread count, interleaved "
                f"(load average now {load_avg()})", main_table(together))
    if "compiler" not in skip:
        section("What runs without a compiler / without Python.h", compiler_checks(R, args))
    if "isa" not in skip:
        section("CPU instruction sets", isa_checks(R, args))
    if "toolchain" not in skip:
        section("A C++ toolchain in a Debian bookworm image", toolchain_size(args))
    emit("")
    emit(f"Total wall time {time.perf_counter() - t_all:.0f} s; load average at end "
         f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "report": report}, f, indent=1)


if __name__ == "__main__":
    main()
