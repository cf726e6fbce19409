"""Loop parts: multi-head loss and metrics, CutMix/MixUp, optimizer choice, SyncBN, schedules, export."""

import json
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from byoc import artifact
from byoc.artifact import build_model, split_heads
from train.classify import distributed, mixing, optim
from train.classify.config import UsageError
from train.classify.engine import use_sync_bn
from train.classify.losses import MultiHeadLoss, correct_count, hard_targets
from train.classify.optim import WarmupSchedule, make_scheduler
from train.classify.metrics import class_counts, format_line, macro_recall, metric_name, weighted_recall


# ----------------------------------------------------------------------------- multi-head loss + metrics


def test_multi_head_loss_is_the_weighted_mean_of_per_head_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 10 + 3), torch.stack([torch.randint(10, (6,)), torch.randint(3, (6,))], 1)
    ce = nn.functional.cross_entropy
    expected = (2 * ce(logits[:, :10], y[:, 0]) + 1 * ce(logits[:, 10:], y[:, 1])) / 3
    assert torch.allclose(MultiHeadLoss([10, 3], (2, 1))(logits, y), expected)
    # probability targets (after CutMix/MixUp) give the same loss when they are one-hot
    soft = [nn.functional.one_hot(y[:, 0], 10).float(), nn.functional.one_hot(y[:, 1], 3).float()]
    assert torch.allclose(MultiHeadLoss([10, 3], (2, 1))(logits, soft), expected)
    assert torch.equal(hard_targets(soft), y)


def test_correct_count_needs_every_head_right():
    logits = torch.tensor([[5.0, 0, 0, 9, 0], [5.0, 0, 0, 0, 9], [0, 5.0, 0, 9, 0]])
    y = torch.tensor([[0, 0], [0, 0], [1, 0]])  # sample 1: head 2 wrong
    assert int(correct_count(logits, y, [3, 2])) == 2
    assert int(correct_count(logits[:, :3], y[:, 0], [3])) == 3


def test_macro_recall_matches_sklearn_including_labels_only_predicted():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(5, 60))
        y = rng.integers(0, 7, n)
        pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, 9, n))  # class 8 is never true
        counts = class_counts(torch.from_numpy(pred), torch.from_numpy(y), 9)
        # summing counts over batches (and ranks) gives the same as one pass
        halves = class_counts(torch.from_numpy(pred[: n // 2]), torch.from_numpy(y[: n // 2]), 9) + \
            class_counts(torch.from_numpy(pred[n // 2:]), torch.from_numpy(y[n // 2:]), 9)
        assert torch.equal(counts, halves)
        with np.errstate(all="ignore"):
            expected = metrics.recall_score(y, pred, average="macro", zero_division=0)
        assert macro_recall(counts) == pytest.approx(expected), trial


def test_weighted_recall_is_bengalis_2_1_1():
    assert weighted_recall([0.9, 0.6, 0.3], (2, 1, 1)) == pytest.approx((1.8 + 0.6 + 0.3) / 4)
    assert metric_name("vowel diacritic/x") == "vowel_diacritic_x"
    line = format_line(2, {"train_loss": 1.0, "val_acc": 0.5, "val_recall_root": 0.25, "val_weighted_recall": 0.75})
    assert line == "epoch=2 train_loss=1.0000 val_acc=0.5000 val_recall_root=0.2500 val_weighted_recall=0.7500"


def test_multi_head_spec_exports_heads_and_the_multihead_handler(tmp_path):
    spec = artifact.model_spec(arch="resnet18", library="torchvision", classes=None, image_size=32,
                             mean=(0.5,) * 3, std=(0.5,) * 3,
                             heads=[{"name": "root", "classes": [str(i) for i in range(7)], "weight": 2},
                                    {"name": "vowel", "classes": ["a", "e", "i"], "weight": 1}])
    model = build_model(spec).eval()
    artifact.write(model, spec, tmp_path)
    saved = json.loads((tmp_path / "model.json").read_text())
    assert (saved["num_classes"], saved["classes"]) == (None, None)
    assert saved["heads"] == [{"name": "root", "num_classes": 7, "classes": [str(i) for i in range(7)], "weight": 2.0},
                              {"name": "vowel", "num_classes": 3, "classes": ["a", "e", "i"], "weight": 1.0}]
    assert "from handlers.multihead import model_fn, input_fn, predict_fn, output_fn" in \
        (tmp_path / "code/inference.py").read_text()
    twin = build_model(saved).eval()
    twin.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    with torch.no_grad():
        out = twin(torch.randn(2, 3, 32, 32))
    assert [p.shape[1] for p in split_heads(out, saved)] == [7, 3]


# ----------------------------------------------------------------------------- CutMix / MixUp


@pytest.mark.parametrize("cutmix, mixup", [(1.0, 0.0), (0.0, 0.4), (1.0, 0.4)])
def test_single_head_mixing_uses_torchvision(cutmix, mixup):
    torch.manual_seed(0)
    mixer = mixing.BatchMixer([10], cutmix, mixup)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(10, (8,))
    mixed, soft = mixer(x, y)
    assert mixed.shape == x.shape and soft.shape == (8, 10)
    assert torch.allclose(soft.sum(1), torch.ones(8))
    assert type(mixer._torchvision).__module__.startswith("torchvision.transforms.v2")


@pytest.mark.parametrize("cutmix, mixup", [(1.0, 0.0), (0.0, 0.4)])
def test_multi_head_mixing_shares_lambda_and_box(cutmix, mixup):
    torch.manual_seed(1)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 12, 12).contiguous()  # image i = i
    y = torch.tensor([[0, 0], [1, 1], [2, 0], [3, 1]])
    mixer = mixing.BatchMixer([4, 2], cutmix, mixup)
    mixed, soft = mixer(x, y)
    assert [s.shape for s in soft] == [(4, 4), (4, 2)]
    for i in range(4):
        own = soft[0][i, y[i, 0]]  # weight left on the sample's own digit
        assert 0.0 <= float(own) <= 1.0
        partner = (i - 1) % 4  # torchvision's pairing: the batch rolled by one
        # the other head keeps the same share for its own label (or all of it when both agree)
        same = y[i, 1] == y[partner, 1]
        assert float(soft[1][i, y[i, 1]]) == pytest.approx(1.0 if same else float(own))
        if cutmix:  # the share of pixels still the sample's own equals lambda
            assert float((mixed[i] == i).float().mean()) == pytest.approx(float(own))
        else:
            assert torch.allclose(mixed[i], own * i + (1 - own) * partner * torch.ones_like(mixed[i]))


def test_mixing_is_reproducible_from_the_global_seed():
    x, y = torch.randn(6, 3, 8, 8), torch.randint(3, (6, 2))
    mixer = mixing.BatchMixer([3, 3], 1.0, 1.0)
    torch.manual_seed(5)
    a = mixer(x, y)
    torch.manual_seed(5)
    b = mixer(x, y)
    assert torch.equal(a[0], b[0]) and all(torch.equal(p, q) for p, q in zip(a[1], b[1]))


# ----------------------------------------------------------------------------- optimizer choice


class _FakeFused(torch.optim.SGD):
    """Stands in for an apex fused optimizer: records the arguments, needs no CUDA."""

    def __init__(self, params, lr, **kw):
        self.apex_kwargs = kw
        super().__init__(params, lr=lr)


@pytest.fixture
def fake_apex(monkeypatch):
    apex = types.ModuleType("apex")
    optimizers = types.ModuleType("apex.optimizers")
    optimizers.FusedAdam = type("FusedAdam", (_FakeFused,), {})
    optimizers.FusedLAMB = type("FusedLAMB", (_FakeFused,), {})
    apex.optimizers = optimizers
    monkeypatch.setitem(sys.modules, "apex", apex)
    monkeypatch.setitem(sys.modules, "apex.optimizers", optimizers)
    return optimizers


@pytest.fixture
def no_apex(monkeypatch):
    monkeypatch.setitem(sys.modules, "apex", None)  # import apex raises ImportError


def model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_apex_fused_optimizers_chosen_with_apex_on_cuda(fake_apex):
    opt, why = optim.make_optimizer(model(), "adamw", 1e-3, 0.05, 0.9, torch.device("cuda", 0))
    assert type(opt).__name__ == "FusedAdam" and opt.apex_kwargs == {"adam_w_mode": True}
    assert why.startswith("apex FusedAdam") and "apex and CUDA present" in why
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]  # no decay on norms/biases
    opt, why = optim.make_optimizer(model(), "lamb", 1e-3, 0.05, 0.9, torch.device("cuda", 0))
    assert type(opt).__name__ == "FusedLAMB" and why.startswith("apex FusedLAMB")


def test_apex_on_cpu_falls_back_to_torch_and_says_why(fake_apex):
    opt, why = optim.make_optimizer(model(), "adamw", 1e-3, 0.05, 0.9, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    assert why.startswith("torch AdamW(") and "need CUDA (device is cpu)" in why


def test_without_apex_torch_fused_or_foreach(no_apex):
    opt, why = optim.make_optimizer(model(), "adamw", 1e-3, 0.05, 0.9, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW) and "apex is not importable" in why
    assert opt.defaults["fused"] or opt.defaults["foreach"]
    opt, why = optim.make_optimizer(model(), "sgd", 0.1, 1e-4, 0.9, torch.device("cpu"))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"]
    assert why.startswith("torch SGD(fused=True)") or why.startswith("torch SGD(foreach=True)")


def test_lamb_without_apex(no_apex, monkeypatch):
    pytest.importorskip("timm")
    opt, why = optim.make_optimizer(model(), "lamb", 1e-3, 0.05, 0.9, torch.device("cpu"))
    assert type(opt).__name__ == "Lamb" and why.startswith("timm Lamb: apex is not importable")
    monkeypatch.setitem(sys.modules, "timm.optim", None)
    with pytest.raises(UsageError, match="--optimizer lamb needs apex on a GPU or timm"):
        optim.make_optimizer(model(), "lamb", 1e-3, 0.05, 0.9, torch.device("cpu"))


# ----------------------------------------------------------------------------- SyncBN, schedules


def test_sync_bn_only_under_ddp_on_gpus():
    gpu_ddp = distributed.Dist(rank=0, world_size=2, device=torch.device("cuda", 0))
    m, state = use_sync_bn(model(), True, gpu_ddp)
    assert state == "on" and isinstance(m[1], nn.SyncBatchNorm)
    m, state = use_sync_bn(model(), True, distributed.Dist(rank=0, world_size=2))
    assert isinstance(m[1], nn.BatchNorm2d) and "needs GPUs" in state  # gloo: no CPU kernel
    assert use_sync_bn(model(), True, distributed.Dist())[1] == "off (single process)"
    assert use_sync_bn(model(), False, gpu_ddp)[1] == "off"


def lrs(schedule, steps=100, warmup=0):
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.4)
    sched = make_scheduler(opt, schedule, 0.4, steps, warmup)
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_schedules():
    cosine = lrs("cosine", warmup=10)
    assert cosine[0] == pytest.approx(0.04) and cosine[9] == pytest.approx(0.4)  # linear warm-up
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:])) and cosine[-1] < 0.001
    onecycle = lrs("onecycle")
    peak = int(np.argmax(onecycle))
    assert onecycle[peak] == pytest.approx(0.4) and 20 <= peak <= 40  # torch's default 30 % warm-up
    assert onecycle[0] < 0.02 and onecycle[-1] < 1e-4
    assert set(lrs("constant")) == {0.4}
    assert WarmupSchedule(10, 0, cosine=True)(5) == pytest.approx(0.5)


def test_progress_bar_only_on_a_terminal(monkeypatch):
    import io
    import sys

    from train.classify.engine import progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())            # SageMaker, docker logs, CloudWatch
    assert progress_bar(True, 10, 1) is None
    monkeypatch.setattr(sys, "stderr", Terminal())                # docker run -it
    assert progress_bar(False, 10, 1) is None                     # other ranks never draw
    bar = progress_bar(True, 10, 1)
    bar.update(10)
    bar.close()
    assert "epoch 1:" in sys.stderr.getvalue() and "/10 [" in sys.stderr.getvalue()   # a bar was drawn
