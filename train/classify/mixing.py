"""CutMix / MixUp on a training batch, for one head or several.

Single head: torchvision's ``v2.CutMix`` / ``v2.MixUp`` (with both, ``v2.RandomChoice``).
Multi-head: torchvision's versions take one label tensor with one ``num_classes``, so the
heads would each get their own lambda and box; ``mix_heads`` does the same arithmetic as
torchvision (partner = the batch rolled by one, lambda ~ Beta(a, a), CutMix's lambda corrected
to the box actually pasted) once, and mixes every head's one-hot targets with that lambda.

Both draw from torch's global RNG, which the checkpoints save and restore, so a resumed run
mixes exactly as the uninterrupted one would.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


class BatchMixer:
    """``mixer(images, targets) -> (images, soft targets)``.

    ``targets``: int64 ``[N]`` (one head) or ``[N, heads]``; the result is one float
    ``[N, classes]`` tensor, or a list of one per head."""

    def __init__(self, head_sizes: list[int], cutmix_alpha: float, mixup_alpha: float):
        self.head_sizes = list(head_sizes)
        self.cutmix_alpha, self.mixup_alpha = cutmix_alpha, mixup_alpha
        self._torchvision = None
        if len(self.head_sizes) == 1:
            from torchvision.transforms import v2

            n = self.head_sizes[0]
            choices = ([v2.CutMix(alpha=cutmix_alpha, num_classes=n)] if cutmix_alpha > 0 else []) + \
                      ([v2.MixUp(alpha=mixup_alpha, num_classes=n)] if mixup_alpha > 0 else [])
            self._torchvision = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    @staticmethod
    def wanted(cutmix_alpha: float, mixup_alpha: float) -> bool:
        return cutmix_alpha > 0 or mixup_alpha > 0

    def __call__(self, images: torch.Tensor, targets: torch.Tensor):
        if self._torchvision is not None:
            return self._torchvision(images, targets)
        return mix_heads(images, [targets[:, h] for h in range(targets.shape[1])], self.head_sizes,
                         self.cutmix_alpha, self.mixup_alpha)


def _beta(alpha: float) -> float:
    a = torch.tensor([alpha], dtype=torch.float64)
    return float(torch.distributions.Beta(a, a).sample())


def mix_heads(images: torch.Tensor, targets: list[torch.Tensor], head_sizes: list[int],
              cutmix_alpha: float, mixup_alpha: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Mix ``images`` [N, C, H, W] with the batch rolled by one; every head's one-hot targets
    get the same lambda (the share of the image that is still the sample's own)."""
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or bool(torch.rand(()) < 0.5))
    lam = _beta(cutmix_alpha if use_cutmix else mixup_alpha)
    partner = images.roll(1, 0)
    if use_cutmix:
        h, w = images.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        rh, rw = int(0.5 * h * (1 - lam) ** 0.5), int(0.5 * w * (1 - lam) ** 0.5)
        y0, y1, x0, x1 = max(cy - rh, 0), min(cy + rh, h), max(cx - rw, 0), min(cx + rw, w)
        images = images.clone()
        images[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        images = images.mul(lam).add_(partner, alpha=1.0 - lam)
    soft = []
    for t, n in zip(targets, head_sizes):
        one_hot = F.one_hot(t, n).to(images.dtype if images.is_floating_point() else torch.float32)
        soft.append(one_hot.mul(lam).add_(one_hot.roll(1, 0), alpha=1.0 - lam))
    return images, soft
