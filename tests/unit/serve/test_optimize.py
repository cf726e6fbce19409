"""serve/optimize.py: a frozen forward only where it gives the model's own outputs."""
import copy
import threading
import time

import pytest
import torch
import torchvision

from serve import optimize


def serve_like(model, x):
    """How a handler runs a user's predict_fn: inference_mode around no_grad."""
    with torch.inference_mode(), torch.no_grad():
        return model(x)


@pytest.fixture
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_resnet18_frozen_gives_the_same_logits_and_top1(resnet18):
    untouched = copy.deepcopy(resnet18)
    assert optimize.optimize(resnet18)
    inputs = torch.randn(4, 1, 3, 64, 64)
    first = serve_like(resnet18, inputs[0])
    assert torch.equal(first, serve_like(untouched, inputs[0]))  # the first call is the user's own
    assert resnet18.forward.frozen is not None
    for x in inputs[1:]:
        got, want = serve_like(resnet18, x), serve_like(untouched, x)
        assert torch.allclose(got, want, atol=optimize.ATOL, rtol=optimize.RTOL)
        assert torch.equal(got.argmax(1), want.argmax(1))


def test_frozen_graph_runs_only_for_the_shape_it_was_checked_on(resnet18, monkeypatch):
    assert optimize.optimize(resnet18)
    serve_like(resnet18, torch.randn(1, 3, 64, 64))
    calls = []
    user_forward = resnet18.forward.user_forward
    monkeypatch.setattr(resnet18.forward, "user_forward", lambda *a: calls.append(1) or user_forward(*a))
    serve_like(resnet18, torch.randn(1, 3, 64, 64))
    assert calls == []  # the frozen graph
    serve_like(resnet18, torch.randn(2, 3, 64, 64))
    assert len(calls) == 1  # a new shape: the user's forward
    with pytest.raises(RuntimeError):  # torch's own error for a double input to this float model
        serve_like(resnet18, torch.randn(1, 3, 64, 64).double())
    assert len(calls) == 2  # a new dtype: the user's forward
    with torch.enable_grad():
        out = resnet18(torch.randn(1, 3, 64, 64))
    assert out.requires_grad and len(calls) == 3  # autograd on: the user's forward


class Branchy(torch.nn.Module):
    """Data-dependent control flow: tracing would bake in one branch."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.linear(x)
        return -self.linear(x)


def test_a_model_it_cannot_freeze_safely_is_served_unchanged():
    torch.manual_seed(0)
    model = Branchy().eval()
    untouched = copy.deepcopy(model)
    assert optimize.optimize(model)
    pos, neg = torch.ones(1, 4), -torch.ones(1, 4)
    for x in (pos, neg, pos, neg):
        assert torch.equal(serve_like(model, x), serve_like(untouched, x))
    assert model.forward.frozen is None


def test_non_modules_and_script_modules_are_left_alone(resnet18):
    assert not optimize.optimize(lambda x: x)
    assert not optimize.optimize({"model": resnet18})
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    assert not optimize.optimize(scripted)


def test_a_model_returning_a_dict_is_served_unchanged():
    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x):
            return {"logits": self.linear(x)}

    model = Heads().eval()
    assert optimize.optimize(model)
    x = torch.randn(1, 4)
    assert torch.equal(serve_like(model, x)["logits"], model.linear(x).detach())
    assert model.forward.frozen is None


def force_choice(monkeypatch, fastest):
    """The timing on the first input decides which graph is kept: fix its outcome
    (the tests check what follows from the choice, not this machine's speed)."""
    def fake_time(fns, x):
        return {name: (1.0 if name == fastest else 2.0) for name in fns}
    monkeypatch.setattr(optimize, "_time", fake_time)


def frozen_on(model, monkeypatch, kind, first):
    """``model`` optimised, its graph (``kind``) frozen on the first input ``first``."""
    force_choice(monkeypatch, kind)
    optimize.optimize(model)
    serve_like(model, first)
    return model


@pytest.mark.parametrize("fastest", ["freeze", "optimize_for_inference"])
def test_the_fastest_graph_that_matches_is_kept(resnet18, monkeypatch, fastest):
    force_choice(monkeypatch, fastest)
    optimize.optimize(resnet18)
    serve_like(resnet18, torch.randn(1, 3, 64, 64))
    assert resnet18.forward.kind == fastest and resnet18.forward.frozen is not None


def test_no_graph_is_kept_when_the_users_forward_is_as_fast(resnet18, monkeypatch):
    force_choice(monkeypatch, "model")
    optimize.optimize(resnet18)
    serve_like(resnet18, torch.randn(1, 3, 64, 64))
    assert resnet18.forward.frozen is None


class FixedBatch(torch.nn.Module):
    """A forward that bakes in batch size 1 (``view(1, -1)``): tracing cannot tell."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).view(1, -1)


class Centred(torch.nn.Module):
    """Samples affect each other: each input is centred on the batch mean."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.linear(x - x.mean(0, keepdim=True) + x)


def test_a_new_batch_size_gets_the_users_answer_and_the_graph_only_if_it_matches(resnet18, monkeypatch):
    force_choice(monkeypatch, "optimize_for_inference")
    optimize.optimize(resnet18)
    untouched = copy.deepcopy(resnet18)
    del untouched.forward
    serve_like(resnet18, torch.randn(1, 3, 64, 64))
    batch = torch.randn(3, 3, 64, 64)
    assert torch.equal(serve_like(resnet18, batch), serve_like(untouched, batch))  # first batch of 3: the user's
    assert resnet18.forward.sizes[3] is True
    assert torch.allclose(serve_like(resnet18, batch), serve_like(untouched, batch), atol=optimize.ATOL,
                          rtol=optimize.RTOL)



def test_a_graph_that_fixed_the_batch_size_keeps_running_inputs_alone(monkeypatch):
    force_choice(monkeypatch, "freeze")
    torch.manual_seed(0)
    fixed = FixedBatch().eval()
    optimize.optimize(fixed)
    inputs = [torch.randn(1, 3, 8, 8) for _ in range(2)]
    alone = [serve_like(fixed, x) for x in inputs]
    assert fixed.forward.frozen is not None
    for _ in range(2):
        got = run_together(fixed, inputs)
        assert fixed.forward.joined[2] is False
        assert all(g.shape == (1, 4 * 6 * 6) and torch.allclose(g, a) for g, a in zip(got, alone))


def run_together(model, inputs, predict=None):
    """Each input through ``predict`` in the forward's threads, as the handler
    runs a batch's predict_fn calls; their results (or exceptions) in order."""
    predict = predict or (lambda x: model(x))
    results = [None] * len(inputs)

    def call(i):
        def run():
            with torch.inference_mode(), torch.no_grad():
                try:
                    results[i] = predict(inputs[i])
                except Exception as exc:
                    results[i] = exc
        return run

    done = threading.Event()
    worker = threading.Thread(target=lambda: (model.forward.together([call(i) for i in range(len(inputs))]),
                                              done.set()), daemon=True, name="worker")
    worker.start()
    assert done.wait(60), "the calls running together did not all finish"
    return results


def test_calls_run_together_give_each_its_own_answer(resnet18, monkeypatch):
    frozen_on(resnet18, monkeypatch, "optimize_for_inference", torch.randn(1, 3, 64, 64))
    forward = resnet18.forward
    batches = []
    graph = forward.frozen
    forward.frozen = lambda x: batches.append(x.shape[0]) or graph(x)
    inputs = [torch.randn(1, 3, 64, 64) for _ in range(4)]
    alone = [serve_like(resnet18, x) for x in inputs]
    batches.clear()

    first = run_together(resnet18, inputs)
    assert all(torch.equal(a, b) for a, b in zip(first, alone))  # first time: the answers alone
    assert forward.joined[4] is True
    batches.clear()
    again = run_together(resnet18, inputs)
    assert batches == [4]  # one forward for the four calls
    for got, want in zip(again, alone):
        assert got.shape == (1, 10)
        assert torch.allclose(got, want, atol=optimize.ATOL, rtol=optimize.RTOL)
        assert torch.equal(got.argmax(1), want.argmax(1))


def test_a_model_whose_samples_interact_keeps_running_them_alone(monkeypatch):
    force_choice(monkeypatch, "freeze")
    torch.manual_seed(0)
    model = Centred().eval()
    optimize.optimize(model)
    inputs = [torch.randn(1, 6) for _ in range(3)]
    alone = [serve_like(model, x) for x in inputs]
    for _ in range(2):
        got = run_together(model, inputs)
        assert model.forward.joined[3] is False
        assert all(torch.allclose(a, b, atol=optimize.ATOL, rtol=optimize.RTOL) for a, b in zip(got, alone))


def test_calls_that_fail_wander_or_call_twice_do_not_hold_up_the_others(resnet18, monkeypatch):
    frozen_on(resnet18, monkeypatch, "freeze", torch.randn(1, 3, 64, 64))
    inputs = [torch.randn(1, 3, 64, 64) for _ in range(6)]

    def predict(x):
        kind = [i for i, y in enumerate(inputs) if y is x][0]
        if kind == 0:
            raise ValueError("the user's own error, before the model")
        if kind == 1:
            return "no model call"
        if kind == 2:
            return resnet18(x.repeat(2, 1, 1, 1))  # not a single input: runs alone
        if kind == 3:
            return resnet18(x) + resnet18(torch.flip(x, dims=[3]))  # twice: two rounds
        if kind == 4:
            return resnet18(x[:, :, :32, :32])  # another shape: runs alone
        return resnet18(x)

    for _ in range(2):
        got = run_together(resnet18, inputs, predict)
        assert isinstance(got[0], ValueError) and got[1] == "no model call"
        assert got[2].shape == (2, 10) and got[4].shape == (1, 10)
        want3 = serve_like(resnet18, inputs[3]) + serve_like(resnet18, torch.flip(inputs[3], dims=[3]))
        assert torch.allclose(got[3], want3, atol=2 * optimize.ATOL, rtol=optimize.RTOL)
        assert torch.allclose(got[5], serve_like(resnet18, inputs[5]), atol=optimize.ATOL, rtol=optimize.RTOL)


def test_an_input_the_model_rejects_fails_alone_when_run_together(monkeypatch):
    torch.manual_seed(0)
    model = frozen_on(torch.nn.Sequential(torch.nn.Linear(6, 3)).eval(), monkeypatch, "freeze", torch.randn(1, 6))
    good = [torch.randn(1, 6) for _ in range(3)]
    got = run_together(model, good[:2] + [torch.randn(1, 6).double()] + good[2:])
    assert isinstance(got[2], RuntimeError)  # torch's dtype error, for that input only
    assert all(isinstance(g, torch.Tensor) and g.shape == (1, 3) for i, g in enumerate(got) if i != 2)


def test_the_batch_runs_on_the_workers_thread_outside_autograd(resnet18, monkeypatch):
    frozen_on(resnet18, monkeypatch, "freeze", torch.randn(1, 3, 64, 64))
    inputs = [torch.randn(1, 3, 64, 64) for _ in range(3)]

    def predict(x):
        if x is inputs[2]:
            time.sleep(0.3)   # leaves last
            raise ValueError("late failure")
        return resnet18(x)

    graph, threads = resnet18.forward.frozen, set()
    resnet18.forward.frozen = lambda x: threads.add(threading.current_thread().name) or graph(x)
    for _ in range(2):   # run_together's thread, like a worker's, has autograd on
        got = run_together(resnet18, inputs, predict)
        assert isinstance(got[2], ValueError)
        assert not got[0].requires_grad and not got[1].requires_grad
    assert threads == {"worker"}
