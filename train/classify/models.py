"""Transfer learning: find and load the ``pretrained`` channel's weights into the network.

The network itself is built from its model.json dict by ``byoc.artifact.build_model``
(shared with the serving image); weights are never downloaded: pretrained weights come
from the ``pretrained`` channel (``load_pretrained``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


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
