"""serve/optimize.py: a frozen forward only where it gives the model's own outputs."""
import copy

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
