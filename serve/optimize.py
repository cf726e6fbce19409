"""A cheaper forward for the user's model, never another answer.

Two optimisations, each used only where it is shown, on distinct inputs, to give the
model's own answers, and checked again on live traffic:

- **A frozen graph** (``BYOC_OPTIMIZE_MODEL``): the model traced and frozen with
  ``torch.jit.freeze``, alone or with ``optimize_for_inference`` (conv-bn folding, oneDNN
  kernels), the fastest kept when it beats the user's forward by MIN_SPEEDUP.
- **Merged model calls** (``BYOC_MERGE_CALLS`` auto|on|off): when a worker gets several
  requests and the user's predict_fn takes one at a time, each predict_fn call runs in its
  own thread with its own input and output; their model calls meet here and run as one batch
  on the worker's own thread, each call getting its own row back (:meth:`ModelForward.together`).

The rule. The first call with an eligible input (one CPU tensor, outside autograd and
autocast, the model in eval mode) runs the user's forward and answers with it. After that
answer has gone (``after_reply``), the worker proves, on a private deep copy of the model
so that nothing it runs touches the served one:

1. the model is pure: the same input twice gives the same answer (no state, no randomness);
   otherwise nothing is optimised;
2. the graph gives the model's answer on distinct inputs: the real one beside perturbed and
   reordered copies (equal inputs prove nothing: a model that scales by the batch's largest
   value answers a batch of equal inputs as it answers each alone).

Merging is proven the first time calls of several requests meet: they run one at a time
(the answers are the model's own), and after the reply a batch is rebuilt from their inputs
and distinct companions, run in two orders, and every row is compared with that input's
answer alone; so is the graph at that batch size. Every batch size up to the worker's (at
most PROVE_AHEAD) is proven then, at once: a batch size first seen later, under load, would
otherwise stall its worker for a second while the queue grows behind it. A model whose
samples affect each other never merges. With ``on`` the proof is skipped (the user vouches);
with ``off`` nothing merges and predict_fn calls run one after another on the worker's thread.

Checked again, after the reply, through the user's forward: the first RECHECK_FIRST merged
batches and graph answers whole; then one graph answer in RECHECK_EVERY, and one row of
a merged batch in RECHECK_ROW_EVERY (its rows in turn: the same rows per batch as a whole
batch every RECHECK_EVERY at the CPU batch size of 4, but a stall of one forward at a time).
One mismatch turns that optimisation off for good, with a warning in the log. The
graph is also dropped as soon as the model's weights or settings change (a predict_fn that
updates the weights: the graph holds its own copy of them), seen from a fingerprint of
every parameter's and buffer's storage and version and every module's plain attributes.

TorchScript is deprecated upstream (torch 2.14 warns on trace/freeze); the graph uses it
until torch removes it (README, "Off TorchScript": what replaces it and why not yet).

Measured (bench/README.md): 1 thread, resnet18@224 27.5 ms per image as the user's model,
21.1 ms frozen, 18.3 ms per image frozen in a batch of 2.
"""
from __future__ import annotations

import copy
import ctypes
import gc
import itertools
import logging
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)

ATOL = 1e-4
RTOL = 1e-3
MIN_SPEEDUP = 1.05   # the graph must beat the user's forward by 5% to be kept
TIMING_ROUNDS = 3    # interleaved timings of each candidate on the first input
RECHECK_FIRST = 8    # the first merged batches and graph answers are all checked again ...
RECHECK_EVERY = 64   # ... then one graph answer in RECHECK_EVERY (its input run again whole) ...
RECHECK_ROW_EVERY = 16   # ... and one row of a merged batch in RECHECK_ROW_EVERY (one input alone)
PROVE_AHEAD = 8      # batch sizes up to this are proven together; a larger one when it first comes
MIN_DISTINCT = 3     # inputs the graph is proven on: the first and at least two distinct companions
GRAPH_TRIES = 8      # inputs tried for that before the graph is given up
STALL_S = 0.25       # model calls waiting this long for a call that does not come: merging stops
DEPRECATION_NOTE = ("the frozen graph uses TorchScript (torch.jit.trace/freeze), deprecated upstream: "
                    "its FutureWarning is silenced here; README 'Off TorchScript' says what replaces it")


def optimize(model, *, graph: bool = True, merge: str = "auto", batch_size: int = 1) -> "ModelForward | None":
    """Wrap ``model.forward``; None (and the model untouched) when it is not a plain
    torch.nn.Module or when both optimisations are off. ``batch_size``: the most requests
    the worker gets at once (the batch sizes to prove)."""
    import torch

    if not graph and merge == "off":
        logger.info("model not optimised: BYOC_OPTIMIZE_MODEL=false and BYOC_MERGE_CALLS=off")
        return None
    if not isinstance(model, torch.nn.Module):
        logger.info("model not optimised: model_fn returned a %s, not a torch.nn.Module", type(model).__name__)
        return None
    if isinstance(model, torch.jit.ScriptModule):
        logger.info("model not optimised: already a TorchScript module")
        return None
    if "forward" in vars(model):
        logger.info("model not optimised: its forward is set on the instance")
        return None
    model.forward = ModelForward(model, graph=graph, merge=merge, batch_size=batch_size)
    logger.info("model optimisation armed (frozen graph %s, merged calls %s): proven after the first answer",
                "on" if graph else "off", merge)
    return model.forward


class ModelForward:
    """The model's forward: the user's own, the frozen graph, or merged calls, each where proven."""

    def __init__(self, model, *, graph: bool = True, merge: str = "auto", batch_size: int = 1):
        self.model = model
        self.batch_size = batch_size
        self.user_forward = type(model).forward.__get__(model)
        self.want_graph = graph
        self.merge = merge
        self.pure = None          # None: not yet proven; False: state or randomness, nothing optimised
        self.sample = None        # (per-sample shape, dtype, device) the proofs ran on
        self.frozen = None        # the graph, and its kind ("freeze" / "optimize_for_inference")
        self.graph_tries = 0      # inputs the graph's proof has been tried on
        self.graph_later = False  # too few distinct inputs so far: try again on a later input
        self.kind = None
        self.fingerprint = None   # the model's weights and settings when it was proven pure
        self.graph_sizes = {}     # batch size -> whether the graph gives the model's answer
        self.merge_sizes = {}     # batch size -> whether merged calls give each its own answer
        self.merge_off = merge == "off"
        self.pending = []         # (task, args) for after the reply: proofs and rechecks
        self.merged_once = False
        self._uses = itertools.count()       # graph answers (not merged), for their rechecks
        self._merges = itertools.count()     # merged batches, for theirs
        self._meeting = None      # the _Meeting of the predict_fn calls running together
        self._recording = None    # the model calls' inputs of a batch run in turn (for its proof)
        self._pool = None         # their threads, made on the first batch
        self._pool_size = 0

    # ------------------------------------------------------------ one call
    def __call__(self, *args, **kwargs):
        single = len(args) == 1 and not kwargs
        meeting = self._meeting
        if meeting is not None and single and self._mergeable(args[0]):
            # what this call set on the model before calling it: another call may set it again before the batch runs
            state = _fingerprint(self.model)
            return meeting.wait_for_batch(args[0], (state != self.fingerprint, state[1]))
        if self._recording is not None and single and self._mergeable(args[0]):
            self._recording.append(args[0].clone())
        return self._forward(*args, **kwargs)

    def _forward(self, *args, recheck: bool = True, **kwargs):
        """``recheck``: False for a merged batch, whose rows _run_batch rechecks itself."""
        if not (len(args) == 1 and not kwargs and _eligible(args[0], self.model)):
            return self.user_forward(*args, **kwargs)
        x = args[0]
        if self.pure is None and not self.pending:
            out = self.user_forward(x)
            self._later(self._prove, x.clone(), out.clone() if _is_float(out) else out)
            return out
        if self._graph_ready(x):
            try:
                out = self.frozen(x)
            except Exception as exc:
                # Tracing fixed something this input changes (a loop count, a shape): the
                # model's own answer (or its own error), and the graph goes if the model answers.
                out = self.user_forward(x)
                self._drop_graph(f"it raised {type(exc).__name__} on an input the model answers")
                return out
            if recheck and _due(self._uses, RECHECK_EVERY):
                self._later(self._recheck, [x.clone()], [out.clone()], "frozen graph")
            return out
        out = self.user_forward(x)
        if self.frozen is not None and _sample(x) == self.sample and x.shape[0] not in self.graph_sizes:
            self._later(self._prove_graph_size, x.clone(), out.clone() if _is_float(out) else out)
        elif self.graph_later and _sample(x) == self.sample and _is_float(out):
            self.graph_later = False
            self._later(self._prove_graph_again, x.clone(), out.clone())
        return out

    def _later(self, task, *args) -> None:
        """Run ``task(*args)`` after the reply (the arguments are copies made now)."""
        self.pending.append((task, args))

    def _graph_ready(self, x) -> bool:
        if self.frozen is None or _sample(x) != self.sample or not self.graph_sizes.get(x.shape[0]):
            return False
        if _fingerprint(self.model) != self.fingerprint:
            self._watch_weights()
            return False
        return True

    def _mergeable(self, x) -> bool:
        return (not self.merge_off and self.pure and _eligible(x, self.model) and x.shape[0] == 1
                and _sample(x) == self.sample)

    # ------------------------------------------------------------ after the reply
    def after_reply(self) -> None:
        """The proofs and rechecks that the last batch asked for: run once its answers
        have gone, so that no client waits for them."""
        import torch

        while self.pending:
            task, args = self.pending.pop(0)
            try:
                with torch.inference_mode():
                    task(*args)
            except Exception:   # a bug of ours must not cost the model its answers
                logger.exception("model optimisation: a check failed; the model runs as written")
                self.pure, self.merge_off = False, True
                self._drop_graph("a check failed")

    def _prove(self, x, expected) -> None:
        """Purity, then the graph, on a private copy: nothing here touches the served model."""
        import torch

        if not _is_float(expected):
            self.pure = False
            logger.info("model not optimised: its forward returns a %s, not a float tensor",
                        type(expected).__name__)
            return
        private = self._private_copy()
        if private is None:
            return
        again = [_run(private, x), _run(private, x)]
        if not all(_matches(a, expected) for a in again):
            self.pure = False
            logger.warning("model not optimised: the same input gave different answers on two calls "
                           "(the model keeps state or draws random numbers): its calls are never merged")
            return
        self.pure, self.sample = True, _sample(x)
        self.fingerprint = _fingerprint(self.model)
        logger.info("model is pure: the same input gives the same answer (merged calls: %s)", self.merge)
        if self.want_graph:
            with torch.inference_mode(False), torch.no_grad():
                self._freeze(private, x, expected)
        del private
        _release_memory()

    def _prove_graph_again(self, x, expected) -> None:
        """The graph, on a later input: the first ones gave too few distinct inputs."""
        import torch

        if len(distinct_inputs(x, MIN_DISTINCT)) < MIN_DISTINCT:
            self.graph_later = True   # this one neither: cheap to tell, before any copy
            return
        private = self._private_copy()
        if private is None:
            return
        with torch.inference_mode(False), torch.no_grad():
            self._freeze(private, x, expected)
        del private
        _release_memory()

    def _private_copy(self):
        """A deep copy of the model without this wrapper; None (logged) when it cannot be copied."""
        import torch

        del self.model.forward
        try:
            with torch.inference_mode(False):   # its weights stay ordinary tensors, as the model's
                return copy.deepcopy(self.model).eval()
        except Exception as exc:
            self.pure = False
            logger.info("model not optimised: it cannot be copied to be checked privately (%s: %s)",
                        type(exc).__name__, exc)
            return None
        finally:
            self.model.forward = self

    def _freeze(self, private, x, expected) -> None:
        import torch

        self.graph_tries += 1
        inputs = distinct_inputs(x, 4)
        # a companion the model refuses proves nothing (equal inputs prove nothing either)
        proven_on = [(y, a) for y, a in zip(inputs, (_run(private, y) for y in inputs))
                     if not isinstance(a, BaseException)]
        if len(proven_on) < MIN_DISTINCT:
            self.graph_later = self.graph_tries < GRAPH_TRIES
            logger.info("frozen graph not proven on input %s %s: too few distinct inputs the model answers (%d); %s",
                        list(x.shape), x.dtype, len(proven_on),
                        "tried again on a later input" if self.graph_later else "not used")
            return
        inputs, alone = zip(*proven_on)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", FutureWarning)  # DEPRECATION_NOTE, logged below
                traced = torch.jit.trace(private, x.clone(), check_trace=False)
                candidates = {
                    "freeze": torch.jit.freeze(traced.eval()),
                    "optimize_for_inference": torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval())),
                }
        except Exception as exc:  # any failure: the user's forward stays
            logger.info("frozen graph not used: freezing failed (%s: %s)", type(exc).__name__, exc)
            return
        logger.info("%s", DEPRECATION_NOTE)
        good = {}
        for kind, graph in candidates.items():
            if all(_matches(_run(graph, y), a) for y, a in zip(inputs, alone)):
                good[kind] = graph
            else:
                logger.info("frozen graph (%s) not used: on distinct inputs its answers differ from the model's",
                            kind)
        del candidates, traced
        chosen = self._fastest(good, private, x)
        if chosen is not None:
            self.kind, self.frozen = chosen
            self.graph_sizes = {x.shape[0]: True}

    def _fastest(self, good: dict, private, x):
        """(kind, graph) of the fastest graph that beats the model by MIN_SPEEDUP; None otherwise."""
        if not good:
            return None
        times = _time({"model": private, **good}, x)
        kind = min(good, key=times.get)
        summary = ", ".join(f"{k} {1000 * t:.1f} ms" for k, t in times.items())
        if times["model"] < MIN_SPEEDUP * times[kind]:
            logger.info("frozen graph not used: none is %.0f%% faster (%s)", 100 * (MIN_SPEEDUP - 1), summary)
            return None
        logger.info("frozen graph used: %s for input %s %s (%s per call)", kind, list(x.shape), x.dtype, summary)
        return kind, good[kind]

    def _prove_graph_size(self, x, expected) -> None:
        """A new batch size for the graph: its answer against the model's, on this input and a
        reordered one (the model is pure: running it again changes nothing)."""
        if self.frozen is None or x.shape[0] in self.graph_sizes:
            return
        n = x.shape[0]
        flipped = x.flip(0)
        ok = _matches(_run(self.frozen, x), expected) and \
            _matches(_run(self.frozen, flipped), _run(self.user_forward, flipped))
        self.graph_sizes[n] = ok
        logger.info("frozen graph %s for batch size %d", "used" if ok else "not used", n)

    def _prove_merge(self, inputs: list) -> None:
        """Merging calls: their inputs, with distinct companions in place of repeats and added
        up to the batch sizes to prove, batched in two orders for each number of calls not yet
        proven (this one, and every one up to the worker's batch size, at most PROVE_AHEAD);
        every row must equal that input's answer alone. Then the graph at that size."""
        sizes = sorted({len(inputs), *range(2, min(self.batch_size, PROVE_AHEAD) + 1)} - set(self.merge_sizes))
        if not sizes or self.merge_off:
            return
        rows = _distinct_rows(inputs, sizes[-1])
        # rows the model refuses alone prove nothing: left out
        answered = [(y, a) for y, a in zip(rows, (_run(self.user_forward, y) for y in rows))
                    if not isinstance(a, BaseException)]
        rows, alone = [y for y, _ in answered], [a for _, a in answered]
        sizes = [n for n in sizes if n <= len(rows)]   # too few distinct inputs: those sizes wait for others
        for n in sizes:
            ok = self.merge_sizes[n] = _batched_rows_match(self.user_forward, rows[:n], alone)
            if not ok:
                self.merge_off = True
                logger.warning("model calls not merged: run as one batch of %d distinct inputs its answers differ "
                               "from each input's answer alone (its samples affect each other)", n)
                return
            logger.info("merged calls proven for %d calls: every row equals its input's answer alone", n)
            self._prove_graph_rows(rows[:n], alone[:n])

    def _prove_graph_rows(self, rows: list, alone: list) -> None:
        """The graph at batch size len(rows) (rows of distinct inputs, merging proven for them):
        every row, in two orders, must equal that input's answer alone."""
        n = len(rows)
        if self.frozen is None or n in self.graph_sizes:
            return
        ok = self.graph_sizes[n] = _batched_rows_match(self.frozen, rows, alone)
        logger.info("frozen graph %s for batch size %d", "used" if ok else "not used", n)

    def _recheck(self, inputs: list, answers: list, what: str) -> None:
        alone = [_run(self.user_forward, x) for x in inputs]
        bad = [i for i, (a, b) in enumerate(zip(answers, alone)) if not _matches(a, b)]
        if not bad:
            return
        diff = max((float((answers[i] - alone[i]).abs().max()) if _same_shape(answers[i], alone[i])
                    else float("inf")) for i in bad)
        if what == "frozen graph":
            self._drop_graph(f"a recheck found an answer that differs from the model's (max abs diff {diff:.3g})")
        else:
            self.merge_off = True
            logger.warning("model calls no longer merged: a recheck found %d of %d merged answer(s) that differ "
                           "from the answers alone (max abs diff %.3g)", len(bad), len(inputs), diff)

    def _drop_graph(self, why: str) -> None:
        if self.frozen is not None:
            logger.warning("frozen graph dropped for good: %s", why)
        self.frozen, self.kind, self.graph_sizes = None, None, {}
        _release_memory()

    # ------------------------------------------------------------ together
    def together(self, calls: list) -> None:
        """Run ``calls`` (each a predict_fn call for one request, which handles its own
        errors): one after another (their inputs kept for the proof) until merging is
        proven for some number of calls; then in threads, their model calls merged where
        that many are proven."""
        import torch

        n = len(calls)
        if self.merge_off or not self.pure or n < 2 or (self.merge != "on" and not any(self.merge_sizes.values())):
            self._in_turn(calls)
            return
        if self._pool is None or self._pool_size < n:
            # one thread per call: a call waiting for the batch holds its thread
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="predict")
            self._pool_size = n
        meeting = _Meeting(n, torch.get_num_threads())
        self._meeting = meeting
        try:
            futures = [self._pool.submit(meeting.attend, call) for call in calls]
            meeting.host(self._run_batch)
            for future in futures:
                future.result()
        finally:
            self._meeting = None
        if meeting.stalled and not self.merge_off:
            self.merge_off = True
            logger.warning("model calls no longer merged: %d predict_fn calls waited %.2f s for another to reach the "
                           "model (a lock around the model call, or slow work before it): they run one after "
                           "another from now on", n, STALL_S)
        self._watch_weights()

    def _in_turn(self, calls: list) -> None:
        """The calls one after another, each done before the next starts (as SageMaker's
        toolkit runs them); the inputs of their model calls kept to prove merging them."""
        record = self.pure and not self.merge_off and len(calls) > 1
        self._recording = [] if record else None
        try:
            for call in calls:
                call()
                if record:
                    # after each call, not only the last: a change one call makes and the next
                    # undoes (a per-request option) counts too
                    self._watch_weights()
        finally:
            inputs, self._recording = self._recording, None
        if self.pure and not record:   # recorded calls were each watched above
            self._watch_weights()
        if inputs and len(inputs) > 1 and len(inputs) not in self.merge_sizes and not self.merge_off:
            self._later(self._prove_merge, inputs)

    def _watch_weights(self) -> None:
        """A predict_fn that changes the model (its weights, a setting) between calls: the
        calls' order matters then, so they are never merged again and the graph goes."""
        if self.fingerprint is not None and not self.merge_off and _fingerprint(self.model) != self.fingerprint:
            self.merge_off = True
            logger.warning("model calls no longer merged: the model's weights or settings changed while serving "
                           "(predict_fn changes them), so each call must see the last one's change")
            self._drop_graph("the model's weights or settings changed since it was frozen")

    def _run_batch(self, inputs: list, seen: list | None = None) -> list:
        """One output per input (each with its batch dim of 1), or an exception for that input
        alone. ``seen``: per input, (whether the model differed from the proven one, its plain
        settings) as its predict_fn call left them."""
        import torch

        # The worker's thread runs this: the callers were all outside autograd, so run it there too.
        with torch.no_grad():
            if seen and any(s and s[0] for s in seen):
                return self._run_apart(inputs, [s[1] for s in seen])
            n = len(inputs)
            if n == 1 or self.merge_off or (self.merge != "on" and not self.merge_sizes.get(n)):
                if n > 1 and n not in self.merge_sizes:
                    self._later(self._prove_merge, [x.clone() for x in inputs])
                return [_outcome(self._forward, x) for x in inputs]
            try:
                batch = torch.cat(inputs)
                out = self._forward(batch, recheck=False)   # the graph once proven for this batch size
            except Exception:
                logger.info("running %d inputs together failed: one at a time", n, exc_info=True)
                return [_outcome(self._forward, x) for x in inputs]
            rows = _split_rows(out, n)
            if rows is None:
                self.merge_off = True
                logger.warning("model calls not merged: a batch of %d gave an output of shape %s", n,
                               list(getattr(out, "shape", [])))
                return [_outcome(self._forward, x) for x in inputs]
            if not self.merged_once:
                self.merged_once = True
                logger.info("model calls merged: %d predict_fn calls ran as one batch", n)
            k = next(self._merges)
            if k < RECHECK_FIRST:
                self._later(self._recheck, [x.clone() for x in inputs], [r.clone() for r in rows], "merged calls")
            elif k % RECHECK_ROW_EVERY == 0:
                i = (k // RECHECK_ROW_EVERY) % n   # each position of the batch in turn
                self._later(self._recheck, [inputs[i].clone()], [rows[i].clone()], "merged calls")
            return rows

    def _run_apart(self, inputs: list, seen: list) -> list:
        """Model calls whose predict_fn calls set the model's settings before calling it (a
        per-request option): each runs alone with the settings its own call left, as it
        would have one call after another; calls are not run together again."""
        now = _fingerprint(self.model)[1]
        if not self.merge_off:
            self.merge_off = True
            logger.warning("model calls no longer merged: predict_fn changes the model's settings before calling it, "
                           "so each call must see its own; they run one after another from now on")
        try:
            outcomes = []
            for x, settings in zip(inputs, seen):
                _apply_settings(settings)
                outcomes.append(_outcome(self.user_forward, x))
            return outcomes
        finally:
            _apply_settings(now)


class _Meeting:
    """The predict_fn calls of one batch, running in threads: their eligible model calls
    wait here, and the worker's own thread (the one in ModelForward.together) runs them
    as one batch once every call still running waits. So every forward runs on that
    thread, as without us: one set of torch threads, one malloc arena. A call that
    returns, raises or calls the model again is counted at once. One timeout: when calls
    wait STALL_S for one that does not come (a predict_fn that holds a lock around its
    model call keeps the others out of it), the meeting is ``stalled``: every model call
    runs as it comes from then on, and the caller stops merging."""

    def __init__(self, calls: int, threads: int):
        self.running = calls
        self.threads = threads  # the worker's torch threads now (adaptive)
        self.waiting = []       # [input, outcome] of the model calls waiting for the batch
        self.stalled = False
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

    def wait_for_batch(self, x, settings=None):
        """A model call from one of the predict_fn calls: its row of the batch. ``settings``:
        (whether the model differs from the proven one, its plain settings) as this call left them."""
        entry = [x, None, settings]
        with self.cond:
            self.waiting.append(entry)
            self.cond.notify_all()
            while entry[1] is None:
                self.cond.wait()
        if isinstance(entry[1], BaseException):
            raise entry[1]
        return entry[1]

    def host(self, run_batch) -> None:
        """On the worker's thread: run the waiting model calls as one batch whenever every
        call still running waits, until all have returned."""
        while True:
            with self.cond:
                while not (self.waiting and (self.stalled or len(self.waiting) >= self.running)) and self.running:
                    if not self.cond.wait(STALL_S if self.waiting else None) and self.waiting:
                        self.stalled = True
                if not self.waiting:
                    return
                batch, self.waiting = self.waiting, []
            try:
                outcomes = run_batch([x for x, _, _ in batch], [settings for _, _, settings in batch])
            except BaseException as exc:  # a bug of ours: every waiting call gets it, none hangs
                outcomes = [exc] * len(batch)
            with self.cond:
                for entry, outcome in zip(batch, outcomes):
                    entry[1] = outcome
                self.cond.notify_all()


# ---------------------------------------------------------------- distinct inputs
def distinct_inputs(x, n: int) -> list:
    """``x`` and up to n - 1 companions that differ from it and from each other: reordered
    and perturbed copies. Float inputs get scaled, shifted and noisy copies too. Integer and
    boolean ones get reordered values and values drawn anew from the ones the input holds
    (booleans: both), so that they stay valid (token ids, masks) while what depends on how
    many of each there are (the real tokens before the padding) changes too. An input with
    a single integer value gets none: the proofs then wait for another input."""
    import torch

    gen = torch.Generator().manual_seed(1234)
    out = [x]
    float_input = x.is_floating_point()
    scale = float(x.abs().mean()) if float_input else 0.0
    scale = scale if scale > 1e-3 else 1.0
    values = None if float_input else (torch.tensor([False, True]) if x.dtype == torch.bool else torch.unique(x))
    k = 0
    while len(out) < n and k < 4 * n + 8:
        k += 1
        if k == 1:
            y = x.flip(-1)
        elif k == 2 and x.numel() > 1:
            y = x.roll(1, -1)
        elif float_input and k == 3:
            y = x * 1.5 + 0.25 * scale
        elif float_input:
            y = x + 0.5 * scale * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        elif k % 2 and len(values) > 1:
            y = values[torch.randint(len(values), x.shape, generator=gen)]
        else:
            perm = torch.randperm(x.numel(), generator=gen)
            y = x.reshape(-1)[perm].reshape(x.shape)
        if not any(torch.equal(y, z) for z in out):
            out.append(y.contiguous())
    return out


def _distinct_rows(inputs: list, count: int = 0) -> list:
    """The inputs, each repeat replaced by a companion of the first one, then companions
    added up to ``count`` rows."""
    import torch

    count = max(count, len(inputs))
    rows, companions = [], iter(distinct_inputs(inputs[0], 2 * count + 2)[1:])
    for x in inputs:
        if any(torch.equal(x, r) for r in rows):
            x = next((c for c in companions if not any(torch.equal(c, r) for r in rows)), x)
        rows.append(x)
    for c in companions:
        if len(rows) >= count:
            break
        if not any(torch.equal(c, r) for r in rows):
            rows.append(c)
    return rows


# ---------------------------------------------------------------- helpers
def _release_memory() -> None:
    """Collect the graphs and copies not kept (each holds its own weights), and give the
    freed pages back (glibc keeps them in the heap otherwise: 35 MiB for resnet18)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


_PLAIN = (bool, int, float, str)   # the settings a fingerprint holds


def _fingerprint(model) -> tuple:
    """What the frozen graph copied from the model, in one walk over its modules: every
    parameter's and buffer's storage and in-place version (and those of tensors kept as
    plain attributes), and every module's plain settings (a temperature, a flag) as
    (module, name, value)."""
    import torch

    tensors, settings = [], []
    for module in model.modules():
        for group in (module._parameters, module._buffers):
            for t in group.values():
                if t is not None:
                    tensors.append((t.data_ptr(), t._version))
        for name, value in module.__dict__.items():
            if isinstance(value, _PLAIN):
                settings.append((module, name, value))
            elif isinstance(value, torch.Tensor):
                tensors.append((value.data_ptr(), value._version))
    return tuple(tensors), tuple(settings)


def _apply_settings(settings: list) -> None:
    for module, name, value in settings:
        if vars(module).get(name, value) is not value:
            setattr(module, name, value)


def _eligible(x, model) -> bool:
    import torch

    return (isinstance(x, torch.Tensor) and x.device.type == "cpu"  # measured on CPU only
            and x.dim() >= 1 and not torch.is_grad_enabled() and not model.training
            and not torch.is_autocast_enabled("cpu"))


def _is_float(out) -> bool:
    import torch

    return isinstance(out, torch.Tensor) and out.is_floating_point()


def _sample(x) -> tuple:
    return tuple(x.shape[1:]), x.dtype, x.device


def _same_shape(a, b) -> bool:
    import torch

    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape


def _matches(got, expected) -> bool:
    """Equal to float rounding: ATOL is meant for outputs of order 1, and is scaled down
    with smaller ones (else any answer of a model whose outputs all lie below it would pass)."""
    import torch

    if not _same_shape(got, expected):
        return False
    scale = min(1.0, float(expected.abs().max())) if expected.is_floating_point() and expected.numel() else 1.0
    return torch.allclose(got, expected, atol=ATOL * scale, rtol=RTOL)


def _batched_rows_match(fn, rows: list, alone: list) -> bool:
    """``rows`` run through ``fn`` as one batch, in their order and reversed: does every row
    of the output equal that input's answer alone (``alone[i]`` for ``rows[i]``)?"""
    import torch

    n = len(rows)
    for order in (list(range(n)), list(reversed(range(n)))):
        got = _split_rows(_run(fn, torch.cat([rows[i] for i in order])), n)
        if got is None or not all(_matches(got[k], alone[i]) for k, i in enumerate(order)):
            return False
    return True


def _split_rows(out, n: int):
    """A batch's output as n rows of batch size 1; None when it has no such rows."""
    import torch

    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != n:
        return None
    return [out[i:i + 1].clone() for i in range(n)]


def _run(fn, x):
    """fn(x), or the exception it raised (kept, compared as a mismatch)."""
    try:
        return fn(x)
    except Exception as exc:
        return exc


_outcome = _run


def _due(counter, every: int) -> bool:
    """The first RECHECK_FIRST uses, then one in ``every``."""
    n = next(counter)
    return n < RECHECK_FIRST or n % every == 0


def _time(fns: dict, x) -> dict:
    """Best of TIMING_ROUNDS interleaved calls of each, after two warm-up calls (a
    TorchScript graph optimises itself on its first calls)."""
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
