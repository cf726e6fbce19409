"""The optimizer and its learning-rate schedule.

Optimizer choice: apex's fused kernels when apex is there and the model is on a GPU, torch's
fused/foreach implementations otherwise. ``make_optimizer`` returns the optimizer and a sentence
saying which one was chosen and why, for the log.

- adamw: apex ``FusedAdam(adam_w_mode=True)`` (one multi-tensor kernel per step), else torch's
  ``AdamW(fused=True)``, else ``foreach=True``.
- lamb: apex ``FusedLAMB`` on a GPU; torch has no LAMB, so timm's ``Lamb`` otherwise.
- sgd: torch's ``SGD(fused=True)`` / ``foreach``; apex's FusedSGD adds nothing torch's fused SGD
  lacks, so it is not used.
apex is never imported at module import: it is optional, and the CPU image does not build it.

Schedules (``--lr-schedule``), stepped once per optimizer step: cosine and constant after a
linear warm-up (``WarmupSchedule`` in a LambdaLR), or torch's OneCycleLR.
"""

from __future__ import annotations

import importlib
import math

import torch
from torch import nn

from .config import UsageError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms and biases (1-d tensors), as in torchvision's recipes."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def apex_optimizers():
    """``apex.optimizers`` or (None, why not)."""
    try:
        return importlib.import_module("apex.optimizers"), None
    except ImportError as e:
        return None, f"apex is not importable ({e.__class__.__name__}: {e})"


def _torch_optimizer(cls, groups, lr: float, extra: dict, reason: str):
    for impl in ("fused", "foreach"):
        try:
            return cls(groups, lr=lr, **extra, **{impl: True}), f"torch {cls.__name__}({impl}=True): {reason}"
        except (RuntimeError, ValueError, TypeError):
            continue
    return cls(groups, lr=lr, **extra), f"torch {cls.__name__}(for-loop): {reason}"


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float,
                   device: torch.device):
    """(optimizer, why) for ``name`` in sgd, adamw, lamb."""
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        return _torch_optimizer(torch.optim.SGD, groups, lr, {"momentum": momentum, "nesterov": momentum > 0},
                                "apex's FusedSGD is not used, torch's fused SGD is its equal")
    apex, why_not = apex_optimizers()
    if apex is not None and device.type != "cuda":
        apex, why_not = None, f"apex is installed but its fused optimizers need CUDA (device is {device.type})"
    if name == "adamw":
        if apex is not None:
            return apex.FusedAdam(groups, lr=lr, adam_w_mode=True), "apex FusedAdam(adam_w_mode=True): apex and CUDA present"
        return _torch_optimizer(torch.optim.AdamW, groups, lr, {}, why_not)
    if name == "lamb":
        if apex is not None:
            return apex.FusedLAMB(groups, lr=lr), "apex FusedLAMB: apex and CUDA present"
        try:
            from timm.optim import Lamb
        except ImportError:
            raise UsageError(f"--optimizer lamb needs apex on a GPU or timm; {why_not} and timm is not "
                             "installed") from None
        return Lamb(groups, lr=lr), f"timm Lamb: {why_not}"
    raise UsageError(f"unknown optimizer {name!r}")


# ----------------------------------------------------------------------------- schedules


class WarmupSchedule:
    """LR factor per step: linear warm-up, then cosine to 0 or constant. Plain attributes, so
    LambdaLR's state_dict stays loadable with weights_only=True."""

    def __init__(self, total_steps: int, warmup_steps: int, cosine: bool):
        self.total_steps, self.warmup_steps, self.cosine = total_steps, warmup_steps, cosine

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.cosine:
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer, schedule: str, lr: float, total_steps: int, warmup_steps: int):
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupSchedule(total_steps, warmup_steps, cosine=schedule == "cosine"))
