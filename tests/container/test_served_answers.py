"""A served answer is the model's own answer; equal inputs prove nothing.

Whatever the serving image does to go faster (a frozen graph, several requests'
model calls merged into one batch), each request must get the answer that the
user's code gives for that request alone. This corpus serves adversarial models
through the serving image, with its defaults, and checks that rule on distinct
inputs.

Each model is a workshop-style code/inference.py (tests/container/answers/, one
module per model): model_fn loads a state_dict the test writes (seeded weights,
weights_only=True); predict_fn takes one request at a time and returns
model(data) under torch.no_grad(); input_fn/output_fn are the image's
(application/x-npy in, JSON out). For each model, one container:

1. warm-up: 16 requests with the same payload at once (as warm-ups and health
   probes send them: a check made on these proves nothing);
2. alone: the warm-up input, then 32 distinct seeded inputs, one at a time;
3. concurrent: the same 32 inputs, 16 in flight at a time, twice (so batches
   come after any check the server made on the warm-up).

Then every concurrent answer (warm-up included) must equal the same input's
answer alone, and every answer must equal the model's own answer, computed here
on the host from the same code and weights (so a server whose answers alone
are already wrong is caught too): allclose, atol 1e-4, rtol 1e-3.

What each model catches (the module docstrings say more):
- batch_max (a): logits scaled by the largest magnitude in the batch: merging
  changes every row.
- softmax_dim0 (b): softmax over the batch dimension: alone it is 1.
- batch_stats (c): batch statistics in eval: each row is normalised with its
  batch mates.
- view_flat (d): x.view(1, -1) into a Conv1d: a batch becomes one sequence and
  the window crosses from one request into the next.
- batch_scalar (e): one number, shaped [1], for the whole call: a merged batch
  has no row per request (and equal inputs give the same mean).
- counter (f): counts its forward calls; answers carry [count, pid]. Right
  property: in each worker the counts are exactly 1..N (N its requests), so
  one forward per request: a merged batch repeats a count, a hidden extra call
  (a trace, a timing, a check run) skips one.
- cache (g): memoises features by input: a trace bakes the first input's
  features in; every answer must equal the uncached one.
- random_noise (h): noise from a generator seeded inside forward: alone
  reproducible, each row of a batch draws other noise.
- weight_change (i): predict_fn doubles the head's weight after its 3rd call;
  answers carry [call, pid]. Right property: in each worker the calls are
  exactly 1..N, calls 1-3 answer with the seeded weights and every later call
  with the doubled ones (computed here): a copy of the weights made earlier
  answers stale.
- convnet (j), mlp (k): per-sample, so merging cannot change their answers;
  they must still merge: the server logs `model calls merged` the first time it
  runs several predict_fn calls' model calls as one batch.
- locked (l): predict_fn holds a lock around its model call: merged calls
  waiting for each other must not hang (each request would end in a 504).
- request_option (m): predict_fn sets a temperature taken from the request on
  the model before calling it: a merged batch would answer every request with
  the last call's.

Two containers run at a time (each with the image's default workers) to keep
the file's run to a few minutes on a 2-core machine.
"""
import importlib.util
import io
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from support.containers import logs_of, serving

pytestmark = pytest.mark.both_engines  # the same contract whichever engine serves

torch = pytest.importorskip("torch")
requests = pytest.importorskip("requests")

ANSWERS = Path(__file__).parent / "answers"
ATOL, RTOL = 1e-4, 1e-3
WARMUP = 16        # same-payload requests at once
DISTINCT = 32      # distinct inputs
IN_FLIGHT = 16     # concurrent requests in the concurrent phase
ROUNDS = 2         # concurrent passes over the distinct inputs
CONTAINERS = 2     # containers at a time
MERGED_LOG = "model calls merged"
VEC, IMAGE = (1, 64), (1, 3, 16, 16)


@dataclass(frozen=True)
class Model:
    shape: tuple
    kind: str = "pure"     # pure: answers depend on the input alone; counter; weights
    merges: bool = False   # per-sample: the server must merge its model calls


MODELS = {
    "batch_max": Model(VEC),
    "softmax_dim0": Model(VEC),
    "batch_stats": Model(IMAGE),
    "view_flat": Model(VEC),
    "batch_scalar": Model(VEC),
    "counter": Model(VEC, kind="counter"),
    "cache": Model(VEC),
    "random_noise": Model(VEC),
    "weight_change": Model(VEC, kind="weights"),
    "convnet": Model(IMAGE, merges=True),
    "mlp": Model(VEC, merges=True),
    "locked": Model(VEC),
    "request_option": Model(VEC),
}


@dataclass
class Served:
    """What one container answered: each answer is an array, or the (status, body) of a failure.
    (No repr of the arrays and log: a failing test's report names its arguments.)"""
    model_dir: Path
    warmup_input: np.ndarray = field(repr=False)
    inputs: list = field(repr=False)
    warmup: list = field(default_factory=list, repr=False)
    alone: list = field(default_factory=list, repr=False)       # [warm-up input, *inputs]
    rounds: list = field(default_factory=list, repr=False)      # ROUNDS lists, one answer per input
    log: str = field(default="", repr=False)


# ------------------------------------------------------------------ the model's own code on the host
def load_module(name: str):
    spec = importlib.util.spec_from_file_location(f"served_answers_{name}", ANSWERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_model_dir(name: str, path: Path, seed: int) -> Path:
    """model.pt (seeded weights) and code/inference.py, readable by the image's uid 1000."""
    module = load_module(name)
    (path / "code").mkdir(parents=True)
    torch.manual_seed(seed)
    torch.save(module.Net().state_dict(), path / "model.pt")
    shutil.copyfile(ANSWERS / f"{name}.py", path / "code" / "inference.py")
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return path


def inputs_for(shape: tuple, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    warm = rng.standard_normal(shape).astype(np.float32)
    return warm, [rng.standard_normal(shape).astype(np.float32) for _ in range(DISTINCT)]


# ------------------------------------------------------------------ the client
def ask(url: str, x: np.ndarray):
    buf = io.BytesIO()
    np.save(buf, x)
    r = requests.post(url + "/invocations", data=buf.getvalue(), timeout=120,
                      headers={"Content-Type": "application/x-npy", "Accept": "application/json"})
    if r.status_code != 200:
        return (r.status_code, r.text[:300])
    return np.asarray(r.json(), dtype=np.float64)


def ask_concurrently(url: str, xs: list) -> list:
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        return list(pool.map(lambda x: ask(url, x), xs))


def serve_and_ask(docker, image, name: str, model_dir: Path, port: int) -> Served:
    warm, xs = inputs_for(MODELS[name].shape, sorted(MODELS).index(name))
    served = Served(model_dir, warm, xs)
    container = f"byoc-test-answers-{name.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    with serving(docker, image, model_dir, port, container) as url:   # removes the container, even on failure
        try:
            served.warmup = ask_concurrently(url, [warm] * WARMUP)
            served.alone = [ask(url, x) for x in [warm, *xs]]
            served.rounds = [ask_concurrently(url, xs) for _ in range(ROUNDS)]
        except requests.RequestException as exc:
            raise AssertionError(f"{name}: {exc!r}\n{logs_of(docker, container)[-3000:]}") from exc
        served.log = logs_of(docker, container)
    return served


@pytest.fixture(scope="module")
def served(request, docker, serve_image, tmp_path_factory, free_port):
    """The selected models served and asked, CONTAINERS at a time: name -> Served, or the exception."""
    root = tmp_path_factory.mktemp("answers")
    selected = {item.callspec.params["name"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}

    names = [name for name in MODELS if name in selected]
    # written here, one after another: torch's seeded initialisation uses its one global generator
    model_dirs = {name: write_model_dir(name, root / name, sorted(MODELS).index(name)) for name in names}

    def one(name):
        try:
            return serve_and_ask(docker, serve_image, name, model_dirs[name], free_port())
        except Exception as exc:  # reported by that model's test
            return exc

    with ThreadPoolExecutor(CONTAINERS) as pool:
        return dict(zip(names, pool.map(one, names)))


# ------------------------------------------------------------------ comparisons
def differs(got, want) -> float:
    """0 when they match (ATOL/RTOL), else the max abs difference (inf: a failure or another shape)."""
    if isinstance(got, tuple) or isinstance(want, tuple) or np.shape(got) != np.shape(want):
        return float("inf")
    if np.allclose(got, want, atol=ATOL, rtol=RTOL):
        return 0.0
    return float(np.max(np.abs(np.asarray(got) - np.asarray(want))))


def answers(served: Served) -> list:
    """(phase, answer, index of its input in [warm-up input, *inputs]) for every request, in order."""
    out = [("warm-up", a, 0) for a in served.warmup]
    out += [("alone", a, i) for i, a in enumerate(served.alone)]
    for k, answered in enumerate(served.rounds, 1):
        out += [(f"concurrent {k}", a, i + 1) for i, a in enumerate(answered)]
    return out


def tally(rows, what: str) -> str:
    """'' when every (phase, got, want) matches, else how many differ per phase and the max abs diff."""
    per_phase, worst = {}, 0.0
    for phase, got, want in rows:
        d = differs(got, want)
        bad, n = per_phase.get(phase, (0, 0))
        per_phase[phase] = (bad + bool(d), n + 1)
        worst = max(worst, d)
    changed = sum(bad for bad, _ in per_phase.values())
    if not changed:
        return ""
    phases = ", ".join(f"{phase} {bad}/{n}" for phase, (bad, n) in per_phase.items())
    return f"{what}: {changed} of {len(rows)} differ ({phases}; max abs diff {worst:.4g})"


def own_answers(name: str, model_dir: Path, xs: list) -> list:
    """predict_fn on the host, one input at a time, on one model: the model's own answers."""
    module = load_module(name)
    model = module.model_fn(str(model_dir))
    return [module.predict_fn(torch.from_numpy(x), model).numpy().astype(np.float64) for x in xs]


def untagged(a):
    """The model's output in a tagged answer (the last two columns are [count or call, pid])."""
    return a[:, :-2]


def one_per_request(tagged: list) -> str:
    """'' when each worker's numbers (column -2, the worker's pid in column -1) are exactly
    1..N and the N add up to the requests sent."""
    by_pid = {}
    for a in tagged:
        by_pid.setdefault(int(a[0, -1]), []).append(int(a[0, -2]))
    problems = []
    for pid, counts in sorted(by_pid.items()):
        if sorted(counts) != list(range(1, len(counts) + 1)):
            repeated = sorted({c for c in counts if counts.count(c) > 1})
            skipped = sorted(set(range(1, max(counts) + 1)) - set(counts))
            problems.append(f"worker {pid}: {len(counts)} answers numbered up to {max(counts)}, "
                            f"repeated {repeated[:10]}, skipped {skipped[:10]}")
    if sum(len(c) for c in by_pid.values()) != len(tagged):
        problems.append(f"{sum(len(c) for c in by_pid.values())} numbered answers for {len(tagged)} requests")
    return "; ".join(problems)


def optimisation_log(log: str) -> str:
    """The workers' log lines about the optimisation (for a failure's message)."""
    words = ("optimi", "merge", "frozen", "graph", "pure", "proven", "recheck")
    lines = [line for line in log.splitlines()
             if ("serve.optimize" in line or "MODEL_LOG" in line) and any(w in line for w in words)]
    return "\n".join(lines)[-3000:]


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", list(MODELS))
def test_served_answer_is_the_models_own(name, served):
    result = served[name]
    if isinstance(result, Exception):
        raise result
    spec = MODELS[name]
    every = answers(result)
    failed = [(phase, a) for phase, a, _ in every if isinstance(a, tuple)]
    assert not failed, f"{name}: {len(failed)} requests failed, e.g. {failed[:3]}\n{result.log[-3000:]}"

    xs = [result.warmup_input, *result.inputs]
    alone = result.alone
    model_dir = result.model_dir   # the weights the container was given
    problems = []
    if spec.kind == "pure":
        own = own_answers(name, model_dir, xs)
        # every answer given among others (the warm-up's copies, the concurrent rounds) vs the same input alone
        problems.append(tally([(p, a, alone[i]) for p, a, i in every if p != "alone"],
                              "answers vs the same input's answer alone"))
        # and every answer vs the model's own, so answers already wrong alone are caught too
        problems.append(tally([(p, a, own[i]) for p, a, i in every], "answers vs the model's own (host)"))
    elif spec.kind == "counter":
        own = own_answers(name, model_dir, xs)
        problems.append(tally([(p, untagged(a), untagged(alone[i])) for p, a, i in every if p != "alone"],
                              "logits vs the same input's logits alone"))
        problems.append(tally([(p, untagged(a), untagged(own[i])) for p, a, i in every],
                              "logits vs the model's own (host)"))
        # one forward call per request, none hidden: each worker counts exactly 1..N
        problems.append(one_per_request([a for _, a, _ in every]))
    elif spec.kind == "weights":
        module = load_module(name)
        seeded, doubled = module.model_fn(str(model_dir)), module.model_fn(str(model_dir))
        module.double_head(doubled)
        with torch.no_grad():
            before = [seeded(torch.from_numpy(x)).numpy().astype(np.float64) for x in xs]
            after = [doubled(torch.from_numpy(x)).numpy().astype(np.float64) for x in xs]
        assert all(differs(b, a) for b, a in zip(before, after)), "doubling the head must change every answer"
        # each worker's predict_fn calls are 1..N; calls up to CHANGE_AFTER answer with the seeded
        # weights, every later one with the doubled weights
        problems.append(one_per_request([a for _, a, _ in every]))
        problems.append(tally([(p, untagged(a), before[i] if a[0, -2] <= module.CHANGE_AFTER else after[i])
                               for p, a, i in every], "answers vs the weights of their call (host)"))

    problems = [p for p in problems if p]
    assert not problems, f"{name}: " + "; ".join(problems) + "\n" + optimisation_log(result.log)
    if spec.merges:
        # per-sample: merging cannot change its answers, and the server must still merge
        assert MERGED_LOG in result.log, \
            f"{name}: the server never merged model calls (no {MERGED_LOG!r} in the log)\n" + \
            optimisation_log(result.log)
