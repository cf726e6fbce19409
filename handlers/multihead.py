"""Default handler for multi-head image classifiers (model.json ``heads`` set,
Bengali.AI style: one network whose output is the heads' logits side by side).

In:  what handlers.image_classifier takes (images, npy/json arrays), at the
     model's input size and channels (1-channel models get grayscale).
Out: application/json, top-k per head (per request `Accept: application/json; topk=3`
     or CustomAttributes `topk=3`, else BYOC_TOPK, default 5):
     {"predictions": {"grapheme_root": [{"label": "72", "index": 72, "probability": 0.9}, ...],
                      "vowel_diacritic": [...], ...}}
     (a list of such dicts for an array holding several images; with application/jsonlines,
     {"predictions": {...}} per image, one line each);
     application/x-npy or text/csv: each head's probabilities side by side, N x sum(classes).
"""
from __future__ import annotations

import torch

from byoc import artifact
from handlers import common
from handlers.image_classifier import (  # noqa: F401  (same decoding and network)
    deferred_input_fn, forward, input_fn, model_fn)
from serve import codecs
from serve.user_module import batched


@batched
def predict_fn(inputs: list[torch.Tensor], model, context=None) -> list[torch.Tensor]:
    """One forward pass for the batch; softmax within each head."""
    spec = getattr(model, "_byoc_spec", None) or common.spec_for(context)
    heads = torch.split(forward(inputs, model, context), artifact.head_sizes(spec), dim=1)
    probs = torch.cat([torch.softmax(h, dim=1) for h in heads], dim=1).cpu()
    return list(torch.split(probs, common.batch_sizes(inputs)))


def output_fn(prediction: torch.Tensor, accept: str, context=None):
    if accept not in (codecs.JSON, codecs.JSONLINES):
        return codecs.encode(prediction.numpy(), accept), accept
    spec = common.spec_for(context)
    per_head = {}
    for head, probs in zip(spec["heads"], torch.split(prediction, artifact.head_sizes(spec), dim=1)):
        per_head[head["name"]] = common.ranked(probs, head.get("classes") or [], common.topk(probs.shape[1]))
    rows = [{name: ranked[i] for name, ranked in per_head.items()} for i in range(prediction.shape[0])]
    return common.predictions(rows, accept), accept
