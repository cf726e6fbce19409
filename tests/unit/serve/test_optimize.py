"""serve/optimize.py: a frozen graph and merged model calls only where proven, on distinct
inputs, to give the model's own answers, and checked again on live traffic."""
import copy
import logging
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


def replied(model):
    """The worker has sent the batch's answers: the proofs and rechecks run now."""
    model.forward.after_reply()
    return model


def close(a, b):
    return torch.allclose(a, b, atol=optimize.ATOL, rtol=optimize.RTOL)


@pytest.fixture
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def force_choice(monkeypatch, fastest):
    """The timing on the first input decides which graph is kept: fix its outcome
    (the tests check what follows from the choice, not this machine's speed)."""
    def fake_time(fns, x):
        return {name: (1.0 if name == fastest else 2.0) for name in fns}
    monkeypatch.setattr(optimize, "_time", fake_time)


def frozen_on(model, monkeypatch, kind, first, **options):
    """``model`` optimised, its graph (``kind``) proven after the first input ``first``."""
    force_choice(monkeypatch, kind)
    optimize.optimize(model, **options)
    serve_like(model, first)
    return replied(model)


# ---------------------------------------------------------------- the frozen graph
def test_resnet18_first_answer_is_the_models_own_then_the_graph_gives_the_same(resnet18):
    untouched = copy.deepcopy(resnet18)
    assert optimize.optimize(resnet18)
    inputs = torch.randn(4, 1, 3, 64, 64)
    first = serve_like(resnet18, inputs[0])
    assert torch.equal(first, serve_like(untouched, inputs[0]))
    assert resnet18.forward.frozen is None   # nothing is proven before the answer has gone
    replied(resnet18)
    assert resnet18.forward.pure
    for x in inputs[1:]:
        got, want = serve_like(resnet18, x), serve_like(untouched, x)
        assert close(got, want) and torch.equal(got.argmax(1), want.argmax(1))


def test_the_proofs_never_call_the_served_model():
    class Counted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.linear(x)

    torch.manual_seed(0)
    model = Counted().eval()
    optimize.optimize(model)
    serve_like(model, torch.randn(1, 4))
    replied(model)
    assert model.forward.pure and model.calls == 1   # the copy ran the proofs


def test_the_graph_runs_only_for_the_shape_it_was_proven_on(resnet18, monkeypatch):
    frozen_on(resnet18, monkeypatch, "freeze", torch.randn(1, 3, 64, 64))
    calls = []
    user_forward = resnet18.forward.user_forward
    monkeypatch.setattr(resnet18.forward, "user_forward", lambda *a: calls.append(1) or user_forward(*a))
    serve_like(resnet18, torch.randn(1, 3, 64, 64))
    assert calls == []  # the frozen graph
    serve_like(resnet18, torch.randn(2, 3, 64, 64))
    assert len(calls) == 1  # a new batch size: the user's forward, proven after the reply
    with pytest.raises(RuntimeError):  # torch's own error for a double input to this float model
        serve_like(resnet18, torch.randn(1, 3, 64, 64).double())
    assert len(calls) == 2
    with torch.enable_grad():
        out = resnet18(torch.randn(1, 3, 64, 64))
    assert out.requires_grad and len(calls) == 3  # autograd on: the user's forward


def test_a_new_batch_size_is_proven_after_the_reply(resnet18, monkeypatch):
    frozen_on(resnet18, monkeypatch, "optimize_for_inference", torch.randn(1, 3, 64, 64))
    untouched = copy.deepcopy(resnet18)
    del untouched.forward
    batch = torch.randn(3, 3, 64, 64)
    assert torch.equal(serve_like(resnet18, batch), serve_like(untouched, batch))  # the user's answer
    replied(resnet18)
    assert resnet18.forward.graph_sizes[3] is True
    assert close(serve_like(resnet18, batch), serve_like(untouched, batch))


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
        replied(model)
    assert model.forward.frozen is None


def test_non_modules_and_script_modules_are_left_alone(resnet18):
    assert not optimize.optimize(lambda x: x)
    assert not optimize.optimize({"model": resnet18})
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    assert not optimize.optimize(scripted)
    assert not optimize.optimize(resnet18, graph=False, merge="off")


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
    replied(model)
    assert model.forward.frozen is None and model.forward.pure is False


@pytest.mark.parametrize("fastest", ["freeze", "optimize_for_inference"])
def test_the_fastest_graph_that_matches_is_kept(resnet18, monkeypatch, fastest):
    frozen_on(resnet18, monkeypatch, fastest, torch.randn(1, 3, 64, 64))
    assert resnet18.forward.kind == fastest and resnet18.forward.frozen is not None


def test_no_graph_is_kept_when_the_users_forward_is_as_fast(resnet18, monkeypatch):
    frozen_on(resnet18, monkeypatch, "model", torch.randn(1, 3, 64, 64))
    assert resnet18.forward.frozen is None and resnet18.forward.pure


class Stateful(torch.nn.Module):
    """Its answer counts its calls: a second call with the same input answers otherwise."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.linear(x) + self.calls


class Noisy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.linear(x) + torch.randn(x.shape[0], 2)


@pytest.mark.parametrize("cls", [Stateful, Noisy])
def test_a_model_with_state_or_randomness_is_never_optimised(cls, caplog):
    torch.manual_seed(0)
    model = cls().eval()
    optimize.optimize(model)
    with caplog.at_level(logging.WARNING, logger="serve.optimize"):
        serve_like(model, torch.randn(1, 4))
        replied(model)
    assert model.forward.pure is False and model.forward.frozen is None
    assert "the same input gave different answers" in caplog.text
    if cls is Stateful:
        assert model.calls == 1   # the checks ran on a copy: the served model's count is its own
        inputs = [torch.randn(1, 4) for _ in range(4)]
        got = run_together(model, inputs)
        assert sorted(float(g[0, 0] - model.linear(x)[0, 0].detach()) for g, x in zip(got, inputs)) == \
            pytest.approx([2, 3, 4, 5])   # one call each, one after another: never merged


def test_weights_changed_in_place_drop_the_graph(monkeypatch, caplog):
    torch.manual_seed(0)
    model = frozen_on(torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval(),
                      monkeypatch, "freeze", torch.randn(1, 6))
    assert model.forward.frozen is not None
    with torch.no_grad():
        model[2].weight.mul_(2)      # what a predict_fn that updates the model does
    x = torch.randn(1, 6)
    with caplog.at_level(logging.WARNING, logger="serve.optimize"):
        got = serve_like(model, x)
    assert torch.equal(got, model.forward.user_forward(x).detach())
    assert model.forward.frozen is None and "weights or settings changed" in caplog.text


def test_a_setting_changed_on_the_model_drops_the_graph(monkeypatch):
    class Tempered(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)
            self.temperature = 1.0

        def forward(self, x):
            return self.linear(x) / self.temperature

    torch.manual_seed(0)
    model = frozen_on(Tempered().eval(), monkeypatch, "freeze", torch.randn(1, 4))
    assert model.forward.frozen is not None
    model.temperature = 4.0
    x = torch.randn(1, 4)
    assert torch.equal(serve_like(model, x), (model.linear(x) / 4.0).detach())


def test_the_graph_is_rechecked_and_dropped_when_it_drifts(resnet18, monkeypatch, caplog):
    frozen_on(resnet18, monkeypatch, "freeze", torch.randn(1, 3, 64, 64))
    graph = resnet18.forward.frozen
    resnet18.forward.frozen = lambda x: graph(x) + 1   # a graph that no longer matches
    with caplog.at_level(logging.WARNING, logger="serve.optimize"):
        serve_like(resnet18, torch.randn(1, 3, 64, 64))
        replied(resnet18)
    assert resnet18.forward.frozen is None and "recheck" in caplog.text


# ---------------------------------------------------------------- merged calls
def run_together(model, inputs, predict=None, replies=True):
    """Each input through ``predict`` in the forward's threads, as the handler runs a
    batch's predict_fn calls; their results (or exceptions) in order; then the reply."""
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
    if replies:
        replied(model)
    return results


class BatchMax(torch.nn.Module):
    """Scales its logits by the largest magnitude in the batch it is called with."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)

    def forward(self, x):
        out = self.linear(x)
        return out / out.abs().max()


class Centred(torch.nn.Module):
    """Samples affect each other: each input is centred on the batch mean."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.linear(x - x.mean(0, keepdim=True) + x)


class FixedBatch(torch.nn.Module):
    """A forward that bakes in batch size 1 (``view(1, -1)``)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).view(1, -1)


@pytest.mark.parametrize("cls,shape", [(BatchMax, (1, 6)), (Centred, (1, 6)), (FixedBatch, (1, 3, 8, 8))])
@pytest.mark.parametrize("same_payload_first", [True, False])
def test_a_model_whose_samples_interact_never_merges(cls, shape, same_payload_first, caplog):
    """Equal inputs prove nothing: a first batch of the same payload (warm-ups, health
    probes) must not let a batch-dependent model merge later calls."""
    torch.manual_seed(0)
    model = cls().eval()
    optimize.optimize(model)
    untouched = copy.deepcopy(model)
    serve_like(model, torch.randn(*shape))
    replied(model)
    warm = torch.randn(*shape)
    with caplog.at_level(logging.WARNING, logger="serve.optimize"):
        if same_payload_first:
            assert all(torch.equal(g, serve_like(untouched, warm)) for g in run_together(model, [warm] * 4))
        for _ in range(3):
            inputs = [torch.randn(*shape) for _ in range(4)]
            got = run_together(model, inputs)
            assert all(close(g, serve_like(untouched, x)) for g, x in zip(got, inputs))
    assert model.forward.merge_off and not model.forward.merged_once
    assert "model calls not merged" in caplog.text


def test_calls_run_together_give_each_its_own_answer(resnet18, monkeypatch, caplog):
    frozen_on(resnet18, monkeypatch, "optimize_for_inference", torch.randn(1, 3, 64, 64))
    forward = resnet18.forward
    batches = []
    graph = forward.frozen
    forward.frozen = lambda x: batches.append(x.shape[0]) or graph(x)
    inputs = [torch.randn(1, 3, 64, 64) for _ in range(4)]
    alone = [serve_like(resnet18, x) for x in inputs]
    batches.clear()

    first = run_together(resnet18, inputs)   # first time: one at a time, proven after the reply
    assert all(torch.equal(a, b) for a, b in zip(first, alone))
    assert forward.merge_sizes[4] is True
    batches.clear()
    with caplog.at_level(logging.INFO, logger="serve.optimize"):
        again = run_together(resnet18, inputs, replies=False)
    assert batches == [4]  # one forward for the four calls
    assert "model calls merged" in caplog.text
    for got, want in zip(again, alone):
        assert got.shape == (1, 10) and close(got, want) and torch.equal(got.argmax(1), want.argmax(1))


def test_every_batch_size_up_to_the_workers_is_proven_with_the_first_merge(resnet18, monkeypatch):
    """A batch size first seen under load would stall its worker while the queue grows: the
    first calls that meet prove merging, and the graph, for every size up to the worker's."""
    untouched = copy.deepcopy(resnet18)
    frozen_on(resnet18, monkeypatch, "optimize_for_inference", torch.randn(1, 3, 64, 64), batch_size=4)
    forward = resnet18.forward
    run_together(resnet18, [torch.randn(1, 3, 64, 64) for _ in range(2)])
    assert forward.merge_sizes == {2: True, 3: True, 4: True}
    assert all(forward.graph_sizes.get(n) for n in (1, 2, 3, 4))
    batches, graph = [], forward.frozen
    forward.frozen = lambda x: batches.append(x.shape[0]) or graph(x)
    inputs = [torch.randn(1, 3, 64, 64) for _ in range(3)]
    got = run_together(resnet18, inputs, replies=False)
    assert batches == [3] and forward.merged_once   # merged at once, through the graph
    assert all(close(g, serve_like(untouched, x)) for g, x in zip(got, inputs))


def test_a_model_whose_samples_interact_only_in_larger_batches_never_merges(monkeypatch, caplog):
    class FromThree(BatchMax):
        """Rows independent in batches of 1 and 2; scaled by the batch's largest from 3 on."""

        def forward(self, x):
            return super().forward(x) if x.shape[0] >= 3 else self.linear(x)

    torch.manual_seed(0)
    model = frozen_on(FromThree().eval(), monkeypatch, "freeze", torch.randn(1, 6), batch_size=4)
    with caplog.at_level(logging.WARNING, logger="serve.optimize"):
        run_together(model, [torch.randn(1, 6) for _ in range(2)])
    assert model.forward.merge_off and model.forward.merge_sizes.get(3) is False
    inputs = [torch.randn(1, 6) for _ in range(4)]
    got = run_together(model, inputs)
    assert all(torch.equal(g, model.forward.user_forward(x).detach()) for g, x in zip(got, inputs))


def test_after_the_first_merged_batches_one_row_is_rechecked_each_time_in_turn(resnet18, monkeypatch, caplog):
    """A drift in one position of the batch is found when that position's turn comes; each
    recheck runs one input through the user's forward, not the whole batch."""
    monkeypatch.setattr(optimize, "RECHECK_FIRST", 0)
    monkeypatch.setattr(optimize, "RECHECK_ROW_EVERY", 1)
    frozen_on(resnet18, monkeypatch, "freeze", torch.randn(1, 3, 64, 64), batch_size=3)
    forward = resnet18.forward
    run_together(resnet18, [torch.randn(1, 3, 64, 64) for _ in range(3)])   # proves 2 and 3
    graph = forward.frozen
    forward.frozen = lambda x: graph(x) + torch.arange(x.shape[0]).eq(2).float().unsqueeze(1)   # row 2 drifts
    rechecked = []
    user_forward = forward.user_forward
    monkeypatch.setattr(forward, "user_forward", lambda x: rechecked.append(x.shape[0]) or user_forward(x))
    with caplog.at_level(logging.WARNING, logger="serve.optimize"):
        for turn in range(3):
            assert not forward.merge_off
            rechecked.clear()
            run_together(resnet18, [torch.randn(1, 3, 64, 64) for _ in range(3)])
            assert rechecked == [1]   # one input alone per batch
    assert forward.merge_off and "no longer merged" in caplog.text   # found at row 2's turn


def test_merging_is_proven_on_distinct_inputs_even_when_the_batch_repeats_one(resnet18, monkeypatch):
    frozen_on(resnet18, monkeypatch, "freeze", torch.randn(1, 3, 64, 64))
    proofs = []
    user_forward = resnet18.forward.user_forward
    monkeypatch.setattr(resnet18.forward, "user_forward", lambda x: proofs.append(x.clone()) or user_forward(x))
    run_together(resnet18, [torch.ones(1, 3, 64, 64)] * 3)
    batches = [x for x in proofs if x.shape[0] == 3]
    assert batches and all(len({tuple(row.flatten()[:50].tolist()) for row in b}) == 3 for b in batches)


def test_a_recheck_that_finds_a_changed_answer_stops_merging_for_good(caplog):
    class Switch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(6, 3)
            self.by_batch = False   # flips after the proof: only a live recheck can see it

        def forward(self, x):
            out = self.linear(x)
            return out / out.abs().max() if self.by_batch else out

    torch.manual_seed(0)
    model = Switch().eval()
    optimize.optimize(model, graph=False)
    serve_like(model, torch.randn(1, 6))
    replied(model)
    inputs = [torch.randn(1, 6) for _ in range(3)]
    run_together(model, inputs)
    assert model.forward.merge_sizes[3]
    model.by_batch = True
    with caplog.at_level(logging.WARNING, logger="serve.optimize"):
        run_together(model, inputs)   # merged (the first merged batches are all rechecked)
    assert model.forward.merge_off and "no longer merged" in caplog.text
    got = run_together(model, inputs)
    assert all(torch.equal(g, model.forward.user_forward(x).detach()) for g, x in zip(got, inputs))


def test_a_predict_fn_that_changes_the_weights_keeps_its_calls_in_order(monkeypatch, caplog):
    """Its third call doubles the weights: every later call must see them doubled, as when
    the calls run one after another; merging (which runs the model calls of a batch before
    any of their predict_fn returns) must stop once the change is seen."""
    torch.manual_seed(0)
    model = frozen_on(torch.nn.Sequential(torch.nn.Linear(6, 3)).eval(), monkeypatch, "freeze", torch.randn(1, 6))
    untouched = copy.deepcopy(model)
    del untouched.forward
    calls = []

    def predict(x):
        calls.append(x)
        out = model(x)
        if len(calls) == 3:
            with torch.no_grad():
                model[0].weight.mul_(2)
        return out

    inputs = [torch.randn(1, 6) for _ in range(4)]
    with caplog.at_level(logging.WARNING, logger="serve.optimize"):
        got = run_together(model, inputs, predict)
    with torch.no_grad():
        untouched[0].weight.mul_(2)
    assert close(got[3], serve_like(untouched, inputs[3]))   # call 4 sees the doubled weights
    assert model.forward.merge_off and model.forward.frozen is None and "changed while serving" in caplog.text
    again = run_together(model, inputs, predict)
    assert all(close(g, serve_like(untouched, x)) for g, x in zip(again, inputs))


def test_merge_off_runs_the_calls_one_after_another_on_the_workers_thread(resnet18, monkeypatch):
    frozen_on(resnet18, monkeypatch, "freeze", torch.randn(1, 3, 64, 64), merge="off")
    threads = set()
    run_together(resnet18, [torch.randn(1, 3, 64, 64) for _ in range(3)],
                 lambda x: threads.add(threading.current_thread().name) or resnet18(x))
    assert threads == {"worker"} and not resnet18.forward.merged_once


def test_merge_on_merges_without_the_proof(monkeypatch):
    torch.manual_seed(0)
    model = frozen_on(Centred().eval(), monkeypatch, "freeze", torch.randn(1, 6), merge="on")
    inputs = [torch.randn(1, 6) for _ in range(3)]
    run_together(model, inputs, replies=False)
    assert model.forward.merged_once   # the user vouched; the live recheck still watches
    replied(model)
    assert model.forward.merge_off


def test_calls_that_fail_wander_or_call_twice_do_not_hold_up_the_others(resnet18, monkeypatch):
    frozen_on(resnet18, monkeypatch, "freeze", torch.randn(1, 3, 64, 64), merge="on")   # in threads at once
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

    for _ in range(3):
        got = run_together(resnet18, inputs, predict)
        assert isinstance(got[0], ValueError) and got[1] == "no model call"
        assert got[2].shape == (2, 10) and got[4].shape == (1, 10)
        want3 = serve_like(resnet18, inputs[3]) + serve_like(resnet18, torch.flip(inputs[3], dims=[3]))
        assert torch.allclose(got[3], want3, atol=2 * optimize.ATOL, rtol=optimize.RTOL)
        assert close(got[5], serve_like(resnet18, inputs[5]))


def test_an_input_the_model_rejects_fails_alone_when_run_together(monkeypatch):
    torch.manual_seed(0)
    model = frozen_on(torch.nn.Sequential(torch.nn.Linear(6, 3)).eval(), monkeypatch, "freeze", torch.randn(1, 6))
    good = [torch.randn(1, 6) for _ in range(3)]
    run_together(model, good)   # proves 3
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

    run_together(resnet18, inputs[:2])   # proves 2
    graph, threads = resnet18.forward.frozen, set()
    resnet18.forward.frozen = lambda x: threads.add(threading.current_thread().name) or graph(x)
    for _ in range(2):   # run_together's thread, like a worker's, has autograd on
        got = run_together(resnet18, inputs, predict, replies=False)
        assert isinstance(got[2], ValueError)
        assert not got[0].requires_grad and not got[1].requires_grad
    assert threads == {"worker"}


def test_distinct_inputs_differ_and_integer_ones_keep_to_their_values():
    x = torch.zeros(1, 8)
    made = optimize.distinct_inputs(x, 5)
    assert len(made) == 5 and all(not torch.equal(a, b) for i, a in enumerate(made) for b in made[i + 1:])
    ids = torch.tensor([[12, 7, 33, 0, 0, 0, 0, 0]])   # 3 tokens, then padding
    made = optimize.distinct_inputs(ids, 4)
    assert len(made) == 4 and all(not torch.equal(a, b) for i, a in enumerate(made) for b in made[i + 1:])
    assert all(y.dtype == ids.dtype and set(y.flatten().tolist()) <= {0, 7, 12, 33} for y in made)
    # what depends on how many of each value there are (the real tokens) changes too
    assert len({int((y != 0).sum()) for y in made}) > 1
    masks = optimize.distinct_inputs(torch.zeros(1, 6, dtype=torch.bool), 3)
    assert len(masks) == 3 and all(m.dtype == torch.bool for m in masks)
    assert len(optimize.distinct_inputs(torch.full((1, 6), 7), 4)) == 1   # one value: nothing valid to vary


class Tokens(torch.nn.Module):
    """Token ids padded with 0: a loop over the real tokens, which tracing bakes in."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(100, 8, padding_idx=0)
        self.position = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids):
        n = (ids != 0).sum()
        h = torch.zeros(ids.shape[0], 8)
        for i in range(n):
            h = h + self.embed(ids[:, i]) + self.position.weight[i]
        return self.head(h / n)


def test_a_graph_that_bakes_in_how_many_tokens_is_never_used(monkeypatch):
    """Permutations of the first input keep its count of real tokens: the proof must also
    vary how many there are, or a 5-token request is answered as if it had 3."""
    torch.manual_seed(0)
    model = frozen_on(Tokens().eval(), monkeypatch, "freeze", torch.tensor([[12, 7, 33, 0, 0, 0, 0, 0]]))
    assert model.forward.frozen is None
    five = torch.tensor([[5, 9, 41, 22, 17, 0, 0, 0]])
    assert torch.equal(serve_like(model, five), model.forward.user_forward(five).detach())


def test_a_constant_integer_input_proves_nothing_and_the_graph_waits_for_another(monkeypatch):
    class Bag(torch.nn.Module):   # per sample: any graph of it gives the model's answers
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.EmbeddingBag(100, 8)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, ids):
            return self.head(self.embed(ids))

    torch.manual_seed(0)
    model = frozen_on(Bag().eval(), monkeypatch, "freeze", torch.full((1, 6), 7))   # a warm-up of one token id
    assert model.forward.pure and model.forward.frozen is None and model.forward.graph_later
    serve_like(model, torch.full((1, 6), 9))
    replied(model)
    assert model.forward.frozen is None   # still one value: still waiting, no copy made
    x = torch.tensor([[3, 14, 15, 92, 65, 35]])
    serve_like(model, x)
    replied(model)
    assert model.forward.frozen is not None and model.forward.graph_sizes == {1: True}
    y = torch.tensor([[27, 18, 28, 18, 28, 45]])
    assert close(serve_like(model, y), model.forward.user_forward(y).detach())


def test_a_graph_that_raises_where_the_model_answers_is_dropped_for_the_models_answer(resnet18, monkeypatch,
                                                                                      caplog):
    frozen_on(resnet18, monkeypatch, "freeze", torch.randn(1, 3, 64, 64))
    graph = resnet18.forward.frozen

    def refuses_some(x):
        if x.mean() > 0:
            raise RuntimeError("The following operation failed in the TorchScript interpreter.")
        return graph(x)

    resnet18.forward.frozen = refuses_some
    x = torch.randn(1, 3, 64, 64).abs()
    with caplog.at_level(logging.WARNING, logger="serve.optimize"):
        got = serve_like(resnet18, x)
    assert torch.equal(got, resnet18.forward.user_forward(x).detach())
    assert resnet18.forward.frozen is None and "raised RuntimeError on an input the model answers" in caplog.text


def test_small_outputs_are_compared_at_their_own_scale(caplog):
    """An absolute tolerance meant for outputs of order 1 would pass any answer of a model
    whose outputs are all far below it: batch-max scaling in small units must not merge."""
    class SmallBatchMax(BatchMax):
        def forward(self, x):
            return 5e-5 * super().forward(x)

    torch.manual_seed(0)
    model = SmallBatchMax().eval()
    optimize.optimize(model, graph=False, batch_size=4)
    serve_like(model, torch.randn(1, 6))
    replied(model)
    inputs = [torch.randn(1, 6) for _ in range(4)]
    alone = [model.forward.user_forward(x).detach() for x in inputs]
    for _ in range(3):
        got = run_together(model, inputs)
        assert all(torch.equal(g, a) for g, a in zip(got, alone))
    assert model.forward.merge_off and not model.forward.merged_once


def test_a_predict_fn_that_locks_its_model_call_is_not_held_up(monkeypatch, caplog):
    """A lock around the model call (how users make a predict_fn thread-safe) keeps the other
    calls from ever reaching the model while one waits for them: the wait must end."""
    torch.manual_seed(0)
    model = frozen_on(torch.nn.Sequential(torch.nn.Linear(6, 3)).eval(), monkeypatch, "freeze", torch.randn(1, 6),
                      batch_size=4)
    lock = threading.Lock()

    def predict(x):
        with lock:
            return model(x)

    inputs = [torch.randn(1, 6) for _ in range(4)]
    run_together(model, inputs, predict)   # one after another: merging proven
    assert model.forward.merge_sizes[4]
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="serve.optimize"):
        got = run_together(model, inputs, predict)
    assert time.monotonic() - started < 10   # no hang: about STALL_S per call that could not come
    assert all(close(g, model.forward.user_forward(x).detach()) for g, x in zip(got, inputs))
    assert model.forward.merge_off and "waited" in caplog.text


class Tempered(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.temperature = 1.0

    def forward(self, x):
        return torch.softmax(self.linear(x) / self.temperature, dim=1)


@pytest.mark.parametrize("first_temperatures", [(5.0, 1.0), (1.0, 1.0)])
def test_a_per_request_setting_predict_fn_sets_on_the_model_is_each_calls_own(first_temperatures, monkeypatch):
    """predict_fn sets the request's temperature on the model, then calls it. Run together,
    every call sets it before the batch runs: each call must still get its own. Caught in the
    first batch run one after another when its values differ (even when the last call sets the
    proven value back); else in the first merged batch, whose calls then run apart."""
    torch.manual_seed(0)
    model = frozen_on(Tempered().eval(), monkeypatch, "freeze", torch.randn(1, 4), batch_size=2)
    reference = copy.deepcopy(model)
    del reference.forward

    def predict(request):
        model.temperature = request["temperature"]
        return model(request["inputs"])

    def own(request):
        reference.temperature = request["temperature"]
        return serve_like(reference, request["inputs"])

    for temperatures in (first_temperatures, (5.0, 1.0), (1.0, 3.0), (2.0, 1.0)):
        requests = [{"inputs": torch.randn(1, 4), "temperature": t} for t in temperatures]
        got = run_together(model, requests, predict)
        assert all(close(g, own(r)) for g, r in zip(got, requests)), temperatures
    assert model.forward.merge_off


def test_a_tensor_kept_as_a_setting_is_watched_like_the_weights(monkeypatch):
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)
            self.scale = torch.tensor(2.0)   # a plain attribute, neither parameter nor buffer

        def forward(self, x):
            return self.linear(x) * self.scale

    torch.manual_seed(0)
    model = frozen_on(Scaled().eval(), monkeypatch, "freeze", torch.randn(1, 4))
    assert model.forward.frozen is not None
    model.scale = torch.tensor(3.0)
    x = torch.randn(1, 4)
    assert torch.equal(serve_like(model, x), (model.linear(x) * 3.0).detach())
