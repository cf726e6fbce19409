"""Per-epoch metrics: one regex-friendly line, TensorBoard scalars, a training-curve PNG.

The line, for SageMaker ``metric_definitions`` (e.g. ``{"Name": "val:acc", "Regex":
"val_acc=([0-9.]+)"}``)::

    epoch=3 train_loss=0.4100 train_acc=0.8700 val_loss=0.5000 val_acc=0.8700 lr=0.0100 images_per_sec=123.4

Epochs count from 1 in what is logged. Validation fields are absent without validation data.
A multi-head model adds, per head, ``val_acc_<head>=`` and ``val_recall_<head>=`` (macro-averaged
recall) and ``val_weighted_recall=`` (the Bengali.AI metric); its ``train_acc``/``val_acc`` count
a sample as right only when every head is.
TensorBoard and matplotlib are optional: without them a log line says what is skipped.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ORDER = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_sec")


def format_line(epoch: int, values: dict) -> str:
    parts = [f"epoch={epoch}"]
    for name in ORDER + tuple(sorted(set(values) - set(ORDER))):
        if values.get(name) is None:
            continue
        v = values[name]
        parts.append(f"{name}={v:.1f}" if name == "images_per_sec" else
                     f"{name}={v:.4g}" if name == "lr" and v < 1e-3 else f"{name}={v:.4f}")
    return " ".join(parts)


def metric_name(head: str) -> str:
    """A head name usable in a metric name and a regex: [A-Za-z0-9_] only."""
    return re.sub(r"[^A-Za-z0-9_]", "_", head)


def class_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float64 ``[3, classes]``: true count (support), predicted count, true positives.
    Summable over batches and ranks."""
    return torch.stack([torch.bincount(target, minlength=num_classes),
                        torch.bincount(pred, minlength=num_classes),
                        torch.bincount(target[pred == target], minlength=num_classes)]).double()


def macro_recall(counts: torch.Tensor) -> float:
    """sklearn ``recall_score(average="macro")`` from ``class_counts``: the mean recall over the
    labels present in y_true or y_pred (a label only predicted counts as recall 0)."""
    support, predicted, tp = counts
    present = (support > 0) | (predicted > 0)
    if not bool(present.any()):
        return 0.0
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    return float(recall[present].mean())


def weighted_recall(recalls: list[float], weights) -> float:
    """Bengali.AI's score: the heads' macro recalls averaged with weights (2:1:1)."""
    return sum(r * w for r, w in zip(recalls, weights)) / sum(weights)


class MetricsWriter:
    """TensorBoard under ``<output>/tensorboard``, curves in ``<output_data>/training_curves.png``."""

    def __init__(self, tensorboard_dir: Path, plot_path: Path, enabled: bool = True):
        self.tensorboard_dir = tensorboard_dir
        self.plot_path = plot_path
        self.enabled = enabled
        self._writer = None
        self._tried_writer = False
        self._warned_plot = False

    def _tensorboard(self):
        if not self._tried_writer:
            self._tried_writer = True
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed: no TensorBoard logs")
            else:
                self._writer = SummaryWriter(str(self.tensorboard_dir))
        return self._writer

    def epoch(self, epoch: int, values: dict, history: list[dict]) -> None:
        if not self.enabled:
            return
        writer = self._tensorboard()
        if writer is not None:
            for name, v in values.items():
                if v is not None:
                    group, _, metric = name.partition("_")
                    writer.add_scalar(f"{group}/{metric}" if metric else name, v, epoch)
            writer.flush()
        self.plot(history)

    def plot(self, history: list[dict]) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")  # files only, no display
            import matplotlib.pyplot as plt
        except ImportError:
            if not self._warned_plot:
                log.info("matplotlib is not installed: no training-curve PNG")
                self._warned_plot = True
            return
        epochs = [h["epoch"] for h in history]
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        for split in ("train", "val"):
            for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
                ys = [h.get(f"{split}_{metric}") for h in history]
                if any(y is not None for y in ys):
                    ax.plot(epochs, [float("nan") if y is None else y for y in ys], marker="o", label=split)
        for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.set_xlabel("epoch")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        self.plot_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.plot_path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        tmp.replace(self.plot_path)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
