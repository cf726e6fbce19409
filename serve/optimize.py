"""A cheaper forward for the user's model, same results: a frozen TorchScript
graph, used only where it gives the user's own outputs back, and the forward
calls of one TorchServe batch's predict_fn calls run together as one batch.

The model object model_fn returned stays the one predict_fn gets (its attributes,
eval(), to() all work); only its ``forward`` is wrapped.

The frozen graph. The first call with a single CPU tensor, outside autograd,
runs the user's forward as is and answers with its output. That input is then
traced and frozen two ways, ``torch.jit.freeze`` alone and with
``optimize_for_inference`` (conv-bn folding, oneDNN convolutions), each checked
against the user's output and timed against the user's forward; the fastest is
kept if it beats the user's forward by MIN_SPEEDUP (measured: resnet18 and
EfficientNet-Lite0 gain most from optimize_for_inference, MobileNetV3 from
freeze alone, and a model can gain nothing). After that, a call whose input has
the checked per-sample shape, dtype and device, outside autograd and autocast,
with the model in eval mode, runs the graph: for a new batch size the first call
runs the user's forward and checks the graph against it before the graph takes
that size. Anything else runs the user's forward. The model is served untouched
when tracing warns (data-dependent Python control flow), fails, or the graph's
output differs from the user's beyond ATOL + RTOL * |out|. The graph holds its
own copy of the weights: a model whose weights predict_fn changes later should
run with BYOC_OPTIMIZE_MODEL=false.

Running together (:meth:`FrozenForward.together`). When TorchServe hands a
worker several requests and the user's predict_fn takes one at a time, the
handler runs each predict_fn call in its own thread. Each call still gets its
own input and its own output; the model's forward calls they make meet here,
and once every call still running is waiting on one, their inputs go through
the graph as one batch, on the worker's own thread, and each gets its own row
back. The first time for a batch size, each input also runs alone, and the
batch is used for that size only if its rows match those (ATOL/RTOL): a model
whose samples affect each other, or a graph that fixed the batch size, keeps
running one input at a time.

Measured (bench/README.md, "Issue 11"): 1 thread, resnet18@224 27.5 ms per
image as the user's model, 21.1 ms frozen, 18.3 ms per image frozen in a batch
of 2; served with a workshop inference.py at concurrency 32, 1.13x the tuned
AWS stack with the graph alone, 1.50x with the model calls run together.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)

ATOL = 1e-4
RTOL = 1e-3
MIN_SPEEDUP = 1.05  # the graph must beat the user's forward by 5% to be kept
TIMING_ROUNDS = 3   # interleaved timings of each candidate on the first input


def optimize(model) -> "FrozenForward | None":
    """Wrap ``model.forward`` to freeze on first use; None (and the model
    untouched) when it is not a plain torch.nn.Module."""
    import torch

    if not isinstance(model, torch.nn.Module):
        logger.info("model not optimised: model_fn returned a %s, not a torch.nn.Module",
                    type(model).__name__)
        return None
    if isinstance(model, torch.jit.ScriptModule):
        logger.info("model not optimised: already a TorchScript module")
        return None
    if "forward" in vars(model):
        logger.info("model not optimised: its forward is set on the instance")
        return None
    model.forward = FrozenForward(model)
    logger.info("model optimisation armed: the first tensor input freezes it (torch.jit.freeze)")
    return model.forward


class FrozenForward:
    """The model's forward: the frozen graph for inputs like the one it was
    traced and checked on, the user's forward for everything else."""

    def __init__(self, model):
        self.model = model
        self.user_forward = type(model).forward.__get__(model)
        self.frozen = None
        self.kind = None        # "freeze" or "optimize_for_inference"
        self.sample = None      # (per-sample shape, dtype, device) the graph was checked on
        self.sizes = {}         # batch size -> whether the graph gives the user's output
        self.joined = {}        # batch size -> whether running inputs together matches alone
        self.tried = False
        self._meeting = None    # the _Meeting of the predict_fn calls running together
        self._pool = None       # their threads, made on the first batch
        self._pool_size = 0

    # ------------------------------------------------------------ one call
    def __call__(self, *args, **kwargs):
        meeting = self._meeting
        if meeting is not None and self._joinable(args, kwargs):
            return meeting.wait_for_batch(args[0])
        return self._forward(*args, **kwargs)

    def _forward(self, *args, **kwargs):
        import torch

        if not (len(args) == 1 and not kwargs and _eligible(args[0], self.model)):
            return self.user_forward(*args, **kwargs)
        x = args[0]
        if self.frozen is not None and _sample(x) == self.sample:
            n = x.shape[0]
            if self.sizes.get(n):
                return self.frozen(x)
            if n not in self.sizes:   # a new batch size: the user's answer, and check the graph on it
                out = self.user_forward(x)
                got = _run_quietly(self.frozen, x)
                self.sizes[n] = _matches(got, out)
                logger.info("frozen graph %s for batch size %d", "used" if self.sizes[n] else "not used", n)
                return out
            return self.user_forward(x)
        out = self.user_forward(x)
        if not self.tried:
            self.tried = True
            with torch.inference_mode(False), torch.no_grad():
                self._freeze(x, out)
        return out

    def _joinable(self, args, kwargs) -> bool:
        return (self.frozen is not None and len(args) == 1 and not kwargs
                and _eligible(args[0], self.model) and _sample(args[0]) == self.sample
                and args[0].shape[0] == 1)

    # ------------------------------------------------------------ together
    def together(self, calls: list) -> None:
        """Run ``calls`` (each a predict_fn call for one request, which handles
        its own errors) each in its own thread, their model calls as one batch."""
        import torch

        if self.frozen is None or len(calls) < 2:
            for call in calls:
                call()
            return
        if self._pool is None or self._pool_size < len(calls):
            # one thread per call: a call waiting for the batch holds its thread
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="predict")
            self._pool_size = len(calls)
        meeting = _Meeting(len(calls), torch.get_num_threads())
        self._meeting = meeting
        try:
            futures = [self._pool.submit(meeting.attend, call) for call in calls]
            meeting.host(self._run_batch)
            for future in futures:
                future.result()
        finally:
            self._meeting = None

    def _run_batch(self, inputs: list) -> list:
        """One output per input (each with its batch dim of 1), or an exception
        for that input alone."""
        import torch

        # The worker's thread runs this: the callers were all outside autograd, so run it there too.
        with torch.no_grad():
            n = len(inputs)
            if n == 1 or self.joined.get(n) is False:
                return self._one_at_a_time(inputs)
            try:
                batch = self.frozen(torch.cat(inputs))
            except Exception:
                logger.info("running %d inputs together failed: one at a time", n, exc_info=True)
                return self._one_at_a_time(inputs)
            rows = [batch[i:i + 1].clone() for i in range(n)]
            if n not in self.joined:   # first time: the answers alone, and check the rows against them
                alone = self._one_at_a_time(inputs)
                self.joined[n] = all(not isinstance(a, BaseException) and _matches(r, a)
                                     for r, a in zip(rows, alone))
                logger.info("%d inputs run together: %s", n, "rows match the inputs run alone"
                            if self.joined[n] else "rows differ; one at a time")
                return alone
            return rows

    def _one_at_a_time(self, inputs: list) -> list:
        return [_outcome(self._forward, x) for x in inputs]

    # ------------------------------------------------------------ freezing
    def _trace(self, probe):
        """torch.jit.trace of the model's own forward: this wrapper steps aside
        while it runs (no other call reaches the model meanwhile: the first
        call is never part of a batch run together)."""
        import torch

        del self.model.forward
        try:
            return torch.jit.trace(self.model, probe, check_trace=False)
        finally:
            self.model.forward = self

    def _freeze(self, x, expected) -> None:
        import torch

        if not isinstance(expected, torch.Tensor) or not expected.is_floating_point():
            logger.info("model not optimised: forward returns a %s, not a float tensor",
                        type(expected).__name__)
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                probe = x.clone()
                traced = self._trace(probe)
                candidates = {
                    "freeze": torch.jit.freeze(traced.eval()),
                    "optimize_for_inference": torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval())),
                }
        except Exception as exc:  # any failure: the user's forward stays
            logger.info("model not optimised: freezing failed (%s: %s)", type(exc).__name__, exc)
            return
        chosen = self._choose(candidates, probe, expected)
        # The graphs not kept, and the trace, hold copies of the weights: whatever was chosen.
        del candidates, traced
        _release_memory()
        if chosen is not None:
            self.kind, self.frozen = chosen
            self.sample, self.sizes = _sample(x), {x.shape[0]: True}

    def _choose(self, candidates: dict, probe, expected):
        """(kind, graph) of the fastest candidate that gives ``expected`` on ``probe``
        and beats the user's forward by MIN_SPEEDUP; None otherwise (logged)."""
        good = {}
        for kind, graph in candidates.items():
            if _matches(_run_quietly(graph, probe), expected):
                good[kind] = graph
            else:
                logger.info("frozen graph (%s) not used: its output differs from the model's", kind)
        if not good:
            logger.warning("model not optimised: the frozen graphs' outputs differ from the model's")
            return None
        times = _time({"model": self.user_forward, **good}, probe)
        kind = min(good, key=times.get)
        summary = ", ".join(f"{k} {1000 * t:.1f} ms" for k, t in times.items())
        if times["model"] < MIN_SPEEDUP * times[kind]:
            logger.info("model not optimised: no frozen graph is %.0f%% faster (%s)",
                        100 * (MIN_SPEEDUP - 1), summary)
            return None
        logger.info("model optimised: %s for input %s %s (%s per call)", kind, list(probe.shape), probe.dtype,
                    summary)
        return kind, good[kind]


class _Meeting:
    """The predict_fn calls of one batch, running in threads: their eligible
    model calls wait here, and the worker's own thread (the one in
    FrozenForward.together) runs them as one batch once every call still
    running waits. So every forward runs on that thread, as without us: one
    set of torch threads, one malloc arena (run on the callers' threads,
    EfficientNet-Lite0's container grew 0.5 GiB more). No timeouts: a call that
    returns, raises or calls the model again is counted at once."""

    def __init__(self, calls: int, threads: int):
        self.running = calls
        self.threads = threads  # the worker's torch threads now (adaptive)
        self.waiting = []       # [input, outcome] of the model calls waiting for the batch
        self.cond = threading.Condition()

    def attend(self, call) -> None:
        """One predict_fn call, in a thread of its own."""
        import torch

        try:
            # torch's thread count is per OS thread once set: the user's own ops follow the worker's
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)
            call()
        finally:
            with self.cond:
                self.running -= 1
                self.cond.notify_all()

    def wait_for_batch(self, x):
        """A model call from one of the predict_fn calls: its row of the batch."""
        entry = [x, None]
        with self.cond:
            self.waiting.append(entry)
            self.cond.notify_all()
            while entry[1] is None:
                self.cond.wait()
        if isinstance(entry[1], BaseException):
            raise entry[1]
        return entry[1]

    def host(self, run_batch) -> None:
        """On the worker's thread: run the waiting model calls as one batch
        whenever every call still running waits, until all have returned."""
        while True:
            with self.cond:
                while not (self.waiting and len(self.waiting) >= self.running) and self.running:
                    self.cond.wait()
                if not self.waiting:
                    return
                batch, self.waiting = self.waiting, []
            try:
                outcomes = run_batch([x for x, _ in batch])
            except BaseException as exc:  # a bug of ours: every waiting call gets it, none hangs
                outcomes = [exc] * len(batch)
            with self.cond:
                for entry, outcome in zip(batch, outcomes):
                    entry[1] = outcome
                self.cond.notify_all()


def _release_memory() -> None:
    """Collect the graphs not kept (each held its own copy of the weights), and
    give the freed pages back (glibc keeps them in the heap otherwise: 35 MiB
    for resnet18, measured)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _eligible(x, model) -> bool:
    import torch

    return (isinstance(x, torch.Tensor) and x.device.type == "cpu"  # measured on CPU only
            and x.dim() >= 1 and not torch.is_grad_enabled() and not model.training
            and not torch.is_autocast_enabled("cpu"))


def _sample(x) -> tuple:
    return tuple(x.shape[1:]), x.dtype, x.device


def _matches(got, expected) -> bool:
    import torch

    return (isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor)
            and got.shape == expected.shape and torch.allclose(got, expected, atol=ATOL, rtol=RTOL))


def _run_quietly(graph, x):
    """The graph's output, or None when it fails on this input."""
    try:
        return graph(x)
    except Exception:
        return None


def _outcome(fn, x):
    try:
        return fn(x)
    except Exception as exc:
        return exc


def _time(fns: dict, x) -> dict:
    """Best of TIMING_ROUNDS interleaved calls of each, after one warm-up call
    (a TorchScript graph optimises itself on its first calls)."""
    for fn in fns.values():
        fn(x)
        fn(x)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(TIMING_ROUNDS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(x)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best
