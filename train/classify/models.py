"""Build a classifier from a model.json-style dict; load transfer-learning weights.

``build_model(spec)`` is shared by training and serving: the serving image calls it with
the ``model.json`` dict (docs/model-artifact.md), then loads ``model.pt`` into the result.
It needs only torch and torchvision (timm when ``library`` is ``timm``), imported when
called, never at module import. Weights are never downloaded (``weights=None``): pretrained
weights come from the ``pretrained`` channel (``load_pretrained``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

LIBRARIES = ("torchvision", "timm")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def _timm():
    try:
        import timm
    except ImportError:
        raise ImportError("this model needs timm (pip install timm), which is not installed") from None
    return timm


def resolve_arch(arch: str, library: str = "auto") -> str:
    """The library that provides ``arch``; ValueError with a hint when none does."""
    import torchvision

    if library in ("auto", "torchvision") and arch in torchvision.models.list_models():
        return "torchvision"
    if library in ("auto", "timm"):
        try:
            timm = _timm()
        except ImportError:
            if library == "timm":
                raise
        else:
            if timm.is_model(arch):
                return "timm"
    where = "torchvision or timm" if library == "auto" else library
    raise ValueError(f"unknown architecture {arch!r} in {where} "
                     "(torchvision.models.list_models() / timm.list_models() list the names)")


def build_model(spec: dict) -> nn.Module:
    """A randomly initialised network for ``spec`` (a model.json dict).

    Uses ``arch``, ``library`` (default torchvision), ``num_classes`` and ``input_size``
    (``[C, H, W]``; ViT-style archs need it for their position embeddings).
    A multi-head model (``heads`` set) is one network whose output is the heads' logits
    side by side, in ``heads`` order: ``split_heads`` cuts them apart. One linear layer
    instead of a module per head keeps the network any torchvision/timm classifier and
    its state_dict loadable by name.
    """
    arch = spec["arch"]
    library = spec.get("library") or "torchvision"
    num_classes = sum(head_sizes(spec)) if spec.get("heads") else int(spec["num_classes"])
    channels, height, width = (spec.get("input_size") or [3, 224, 224])
    if library == "torchvision":
        return _torchvision_model(arch, num_classes, (height, width), channels)
    if library == "timm":
        return _timm_model(arch, num_classes, (height, width), channels)
    raise ValueError(f"unknown model library {library!r}; expected one of {LIBRARIES}")


def head_sizes(spec: dict) -> list[int]:
    """Classes per head, in output order (one entry for a single-head model)."""
    heads = spec.get("heads")
    if not heads:
        return [int(spec["num_classes"])]
    return [int(h.get("num_classes") or len(h["classes"])) for h in heads]


def split_heads(logits: torch.Tensor, spec: dict) -> list[torch.Tensor]:
    """The network's N x sum(classes) output cut into one N x classes tensor per head."""
    return list(torch.split(logits, head_sizes(spec), dim=1))


def _torchvision_model(arch: str, num_classes: int, size: tuple, channels: int) -> nn.Module:
    import torchvision

    if channels != 3:
        raise ValueError(f"torchvision models take 3-channel input, input_size has {channels}")
    kwargs = {}
    if arch.startswith("vit_"):
        if size[0] != size[1]:
            raise ValueError(f"{arch} needs a square input, got {size}")
        kwargs["image_size"] = size[0]
    if arch in ("inception_v3", "googlenet"):
        kwargs["aux_logits"] = False  # no pretrained weights asked for, so aux heads are optional
        kwargs["init_weights"] = True
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)


def _timm_model(arch: str, num_classes: int, size: tuple, channels: int) -> nn.Module:
    timm = _timm()
    try:  # models with position embeddings or fixed windows need the input size
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=channels,
                                 img_size=tuple(size))
    except TypeError:  # convnets take no img_size argument
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=channels)


# ----------------------------------------------------------------------------- transfer learning


def find_weights_file(directory: Path, name: str | None = None) -> Path:
    """The weights file in the ``pretrained`` channel: ``name``, or the only one there."""
    if not directory.is_dir():
        raise FileNotFoundError(f"--pretrained needs a 'pretrained' channel ({directory} is missing)")
    if name:
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found in the pretrained channel")
        return path
    found = sorted(p for p in directory.rglob("*") if p.is_file() and p.name.lower().endswith(WEIGHT_SUFFIXES))
    if len(found) != 1:
        raise FileNotFoundError(f"the pretrained channel must hold exactly one weights file "
                                f"({', '.join(WEIGHT_SUFFIXES)}) or --pretrained-file must name it; "
                                f"found {[p.name for p in found][:10]}")
    return found[0]


def read_state_dict(path: Path) -> dict:
    """A state_dict from ``path``: torch files with weights_only=True, or safetensors."""
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict", "module"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors")
    prefixes = ("module.", "_orig_mod.")
    return {next((k[len(p):] for p in prefixes if k.startswith(p)), k): v for k, v in state.items()}


def load_pretrained(model: nn.Module, state: dict) -> dict:
    """Copy every tensor whose name and shape match; others (the new head) keep their init.

    Returns a report: ``loaded``, ``mismatched`` (name: (theirs, ours)), ``missing``
    (ours, not in the file), ``unexpected`` (theirs, not in the model). Raises when nothing
    matches: that is a wrong file or a wrong --arch, never what the user meant.
    """
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    report = {
        "loaded": len(usable),
        "total": len(own),
        "mismatched": {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                       if k in own and own[k].shape != v.shape},
        "missing": sorted(set(own) - set(usable)),
        "unexpected": sorted(set(state) - set(own)),
    }
    if not usable:
        raise ValueError("no tensor of the pretrained file matches the model by name and shape: "
                         f"wrong file or wrong --arch? (file keys like {list(state)[:3]})")
    model.load_state_dict(usable, strict=False)
    return report
