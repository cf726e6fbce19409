"""Losses and accuracy counts for one output head or several (multi-head parquet data).

A multi-head model's logits are the heads' logits side by side (``[N, sum(head_sizes)]``);
targets are class indices ``[N]`` / ``[N, heads]``, or after CutMix/MixUp per-head
probabilities.
"""

from __future__ import annotations

import torch
from torch import nn


class MultiHeadLoss(nn.Module):
    """Per-head cross-entropy, averaged with the head weights: sum(w_h * CE_h) / sum(w_h).

    Weighted, so the training emphasis follows the reported metric (Bengali.AI's grapheme
    root counts double); divided by the weight sum, so the loss stays on a single head's
    scale and the usual learning rates still fit. Targets: int64 ``[N, heads]`` or a list of
    per-head probability tensors (CutMix/MixUp)."""

    def __init__(self, head_sizes: list[int], weights, label_smoothing: float = 0.0):
        super().__init__()
        self.head_sizes = list(head_sizes)
        self.weights = [float(w) for w in weights]
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, targets) -> torch.Tensor:
        parts = torch.split(logits, self.head_sizes, dim=1)
        if torch.is_tensor(targets):
            targets = [targets[:, h] for h in range(targets.shape[1])]
        total = sum(w * self.ce(p, t) for w, p, t in zip(self.weights, parts, targets))
        return total / sum(self.weights)


def hard_targets(targets) -> torch.Tensor:
    """Class indices from int targets or soft (mixed) ones: ``[N]`` or ``[N, heads]``."""
    if isinstance(targets, (list, tuple)):
        return torch.stack([t.argmax(1) for t in targets], dim=1)
    return targets.argmax(1) if targets.is_floating_point() else targets


def correct_count(logits: torch.Tensor, targets: torch.Tensor, head_sizes: list[int]) -> torch.Tensor:
    """Samples with every head right."""
    if targets.ndim == 1:
        return (logits.argmax(1) == targets).sum()
    preds = torch.stack([p.argmax(1) for p in torch.split(logits, head_sizes, dim=1)], dim=1)
    return (preds == targets).all(1).sum()
