"""Write the model artifact (docs/model-artifact.md): model.pt, model.json, code/inference.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from byoc.checkpoint import atomic_save, unwrap_model

FORMAT_VERSION = 1
# The serving image has the handlers package installed; this shim makes the artifact
# self-describing for any SageMaker PyTorch serving stack that looks for code/inference.py.
INFERENCE_SHIM = (
    '"""Handler for a pytorch-byoc built-in image classifier (the serving image provides it)."""\n'
    "from handlers.image_classifier import model_fn, input_fn, predict_fn, output_fn  # noqa: F401\n"
)
MULTIHEAD_SHIM = (
    '"""Handler for a pytorch-byoc multi-head image classifier (the serving image provides it)."""\n'
    "from handlers.multihead import model_fn, input_fn, predict_fn, output_fn  # noqa: F401\n"
)


def _version(dist_name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None


def model_spec(*, arch: str, library: str, classes: list[str] | None, image_size: int,
               mean, std, eval_crop_ratio: float = 1.0, heads: list[dict] | None = None) -> dict:
    """The model.json dict, keys in the documented order.

    ``heads`` (multi-head): ``[{"name", "classes", "weight"}, ...]`` in output order;
    ``num_classes``/``classes`` are then null."""
    import torchvision

    if heads:
        heads = [{"name": h["name"], "num_classes": len(h["classes"]), "classes": list(h["classes"]),
                  "weight": float(h.get("weight", 1.0))} for h in heads]

    return {
        "format_version": FORMAT_VERSION,
        "task": "image-classification",
        "arch": arch,
        "library": library,
        "num_classes": None if heads else len(classes),
        "classes": None if heads else list(classes),
        "heads": heads or None,
        "input_size": [3, image_size, image_size],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "eval_crop_ratio": float(eval_crop_ratio),
        "weights": "model.pt",
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": _version("timm"),
            "pytorch_byoc": _version("pytorch-byoc"),
        },
    }


def plain_state_dict(model: torch.nn.Module) -> dict:
    """CPU, contiguous tensors with no DDP/compile prefixes: what build_model(spec) accepts."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap_model(model).state_dict().items()}


def export_model(model: torch.nn.Module, spec: dict, model_dir: Path) -> list[Path]:
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = atomic_save(plain_state_dict(model), model_dir / spec["weights"])
    meta = model_dir / "model.json"
    tmp = meta.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(spec, indent=2) + "\n")
    os.replace(tmp, meta)
    code = model_dir / "code"
    code.mkdir(exist_ok=True)
    shim = code / "inference.py"
    shim.write_text(MULTIHEAD_SHIM if spec.get("heads") else INFERENCE_SHIM)
    return [weights, meta, shim]
