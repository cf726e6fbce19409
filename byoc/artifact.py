"""The model artifact (docs/model-artifact.md): what training writes and serving reads.

    <model_dir>/model.json    how to rebuild the network and pre/post-process (``model_spec``)
    <model_dir>/model.pt      its weights, a plain state_dict (or model.ts / model.pt2)
    <model_dir>/code/         optional: the user's inference.py, requirements.txt

The one owner of that format: the trainer writes it with ``write``; the serving handlers
read it with ``read_spec``, rebuild the network with ``load_model`` and preprocess
images with ``EvalTransform``, the evaluation transform the trainer used. Imports torch,
torchvision (timm for timm models) and Pillow only when called, so that reading
model.json stays light; the serving image uses it without the trainer's package.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT_VERSION = 1
SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.pt"
TORCHSCRIPT_FILE = "model.ts"
EXPORTED_FILE = "model.pt2"
CODE_DIR = "code"
LIBRARIES = ("torchvision", "timm")

# The serving image has the handlers package installed; these shims make the artifact
# self-describing for any SageMaker PyTorch serving stack that looks for code/inference.py.
INFERENCE_SHIM = (
    '"""Handler for a pytorch-byoc built-in image classifier (the serving image provides it)."""\n'
    "from handlers.image_classifier import model_fn, input_fn, predict_fn, output_fn  # noqa: F401\n"
)
MULTIHEAD_SHIM = (
    '"""Handler for a pytorch-byoc multi-head image classifier (the serving image provides it)."""\n'
    "from handlers.multihead import model_fn, input_fn, predict_fn, output_fn  # noqa: F401\n"
)


# ----------------------------------------------------------------------------- where the files are


def spec_path(model_dir) -> str:
    return os.path.join(model_dir, SPEC_FILE)


def weights_path(model_dir, spec: dict) -> str:
    return os.path.join(model_dir, spec.get("weights") or WEIGHTS_FILE)


def torchscript_path(model_dir) -> str:
    return os.path.join(model_dir, TORCHSCRIPT_FILE)


def exported_path(model_dir) -> str:
    return os.path.join(model_dir, EXPORTED_FILE)


def code_dir(model_dir) -> str:
    """The user's code: inference.py, its sibling modules, requirements.txt, wheelhouse/."""
    return os.path.join(model_dir, CODE_DIR)


def model_root(model_dir) -> str:
    """The folder holding the model's files: a model.tar.gz whose only top-level entry is a
    folder unpacks as that folder, so descend into it (FileNotFoundError when absent)."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"the model directory {model_dir} does not exist")
    entries = [e for e in os.listdir(model_dir) if not e.startswith(".")]
    if len(entries) == 1 and entries[0] != CODE_DIR and os.path.isdir(os.path.join(model_dir, entries[0])):
        return os.path.join(model_dir, entries[0])
    return model_dir


PICKLE_SUFFIXES = (".pt", ".pth")


def default_model_file(model_dir) -> str | None:
    """The file a default model_fn loads when there is no model.json, in the order it tries:
    model.ts (TorchScript), model.pt2 (torch.export), then SageMaker's PyTorch toolkit's rule:
    model.pt, else the one *.pt / *.pth file. None when there is none; ValueError, naming them,
    when several *.pt / *.pth files leave the choice open."""
    for name in (TORCHSCRIPT_FILE, EXPORTED_FILE, WEIGHTS_FILE):
        if os.path.isfile(os.path.join(model_dir, name)):
            return os.path.join(model_dir, name)
    found = sorted(f for f in os.listdir(model_dir)
                   if f.endswith(PICKLE_SUFFIXES) and os.path.isfile(os.path.join(model_dir, f)))
    if len(found) > 1:
        raise ValueError(f"several model files and no model.pt to choose: {', '.join(found)} "
                         "(keep one, name it model.pt, or load it in model_fn)")
    return os.path.join(model_dir, found[0]) if found else None


def weights_size(model_dir) -> int:
    """Bytes of the model's files outside code/ (its weights, as far as the files tell)."""
    total = 0
    for root, dirs, files in os.walk(model_dir):
        if root == str(model_dir):
            dirs[:] = [d for d in dirs if d != CODE_DIR]
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def nothing_to_load(model_dir, program: str) -> str | None:
    """Why ``model_dir`` holds no model to serve (no code/<program>, no model.json and no file
    a default model_fn loads); None when it holds one."""
    if os.path.isfile(os.path.join(code_dir(model_dir), program)) or os.path.isfile(spec_path(model_dir)):
        return None
    if default_model_file(model_dir) is not None:
        return None
    return no_model_message(model_dir, program)


def no_model_message(model_dir, program: str) -> str:
    """The reason a default model_fn finds nothing to load, naming what the folder holds."""
    return (f"no model to load: the model directory has no code/{program} (SAGEMAKER_PROGRAM) with a model_fn, "
            "and none of the files the default model_fn loads (model.json + model.pt, model.ts, model.pt2, "
            f"a TorchScript model.pt, or one *.pt / *.pth file); it holds: {describe(model_dir)}")


def describe(model_dir) -> str:
    """What the model directory holds, for an error message (the first 20 entries)."""
    try:
        names = sorted(os.listdir(model_dir))
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if not names:
        return "nothing (it is empty)"
    shown = [n + ("/" if os.path.isdir(os.path.join(model_dir, n)) else "") for n in names[:20]]
    return ", ".join(shown) + (f" and {len(names) - 20} more" if len(names) > 20 else "")


# ----------------------------------------------------------------------------- define, write, read


def _version(dist_name: str) -> str | None:
    from importlib import metadata   # here: importing it costs a serving worker's start 40 ms

    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None


def model_spec(*, arch: str, library: str, classes: list[str] | None, image_size: int,
               mean, std, eval_crop_ratio: float = 1.0, heads: list[dict] | None = None) -> dict:
    """The model.json dict, keys in the documented order.

    ``heads`` (multi-head): ``[{"name", "classes", "weight"}, ...]`` in output order;
    ``num_classes``/``classes`` are then null."""
    import torch
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
        "weights": WEIGHTS_FILE,
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": _version("timm"),
            "pytorch_byoc": _version("pytorch-byoc"),
        },
    }


def plain_state_dict(model: nn.Module) -> dict:
    """CPU, contiguous tensors with no DDP/compile prefixes: what build_model(spec) accepts."""
    from byoc.checkpoint import unwrap_model

    return {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap_model(model).state_dict().items()}


def write(model: nn.Module, spec: dict, model_dir: Path) -> list[Path]:
    """model.pt, model.json and code/inference.py into ``model_dir``; the files written."""
    from byoc.checkpoint import atomic_save

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = atomic_save(plain_state_dict(model), Path(weights_path(model_dir, spec)))
    meta = Path(spec_path(model_dir))
    tmp = meta.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(spec, indent=2) + "\n")
    os.replace(tmp, meta)
    code = Path(code_dir(model_dir))
    code.mkdir(exist_ok=True)
    shim = code / "inference.py"
    shim.write_text(MULTIHEAD_SHIM if spec.get("heads") else INFERENCE_SHIM)
    return [weights, meta, shim]


def read_spec(model_dir) -> dict | None:
    """model.json as a dict, or None when the model directory has none
    (a TorchScript/torch.export model, or one served by the user's own code)."""
    path = spec_path(model_dir)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        spec = json.load(f)
    validate(spec)
    return spec


def validate(spec) -> None:
    """ValueError with the reason when ``spec`` cannot be a model.json.

    Only what every reader relies on: keys a task needs are checked where they are
    used (``build_model``, ``EvalTransform``), so a hand-written model.json for the
    user's own code may hold just what that code reads."""
    if not isinstance(spec, dict):
        raise ValueError(f"{SPEC_FILE} must hold a JSON object, not {type(spec).__name__}")
    version = spec.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{SPEC_FILE} has format_version {version!r}; this image reads up to {FORMAT_VERSION}")


def default_handler(spec: dict | None) -> str:
    """The built-in handler module for a model.json (raw tensors when there is none)."""
    if spec and spec.get("task") == "image-classification":
        return "handlers.multihead" if spec.get("heads") else "handlers.image_classifier"
    return "handlers.tensor"


# ----------------------------------------------------------------------------- the network


def _timm():
    try:
        import timm
    except ImportError:
        raise ImportError("this model needs timm (pip install timm), which is not installed") from None
    return timm


def resolve_arch(arch: str, library: str = "auto") -> str:
    """The library that provides ``arch`` (model.json's ``library``); ValueError with a hint when none does."""
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
    its state_dict loadable by name. Weights are never downloaded (``weights=None``).
    """
    arch = spec["arch"]
    library = spec.get("library") or "torchvision"
    num_classes = sum(head_sizes(spec))
    channels, height, width = (spec.get("input_size") or [3, 224, 224])
    if library == "torchvision":
        return _torchvision_model(arch, num_classes, (height, width), channels)
    if library == "timm":
        return _timm_model(arch, num_classes, (height, width), channels)
    raise ValueError(f"unknown model library {library!r}; expected one of {LIBRARIES}")


def load_model(model_dir, spec: dict | None = None) -> nn.Module:
    """Rebuild the network from model.json and load its weights (eval mode, on the CPU)."""
    import torch

    spec = spec if spec is not None else read_spec(model_dir)
    if spec is None:
        raise FileNotFoundError(f"no {SPEC_FILE} in {model_dir}")
    model = build_model(spec)
    state = torch.load(weights_path(model_dir, spec), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def head_sizes(spec: dict) -> list[int]:
    """Classes per head, in output order (one entry for a single-head model)."""
    heads = spec.get("heads")
    if not heads:
        return [int(spec["num_classes"])]
    return [int(h.get("num_classes") or len(h["classes"])) for h in heads]


def split_heads(logits: torch.Tensor, spec: dict) -> list[torch.Tensor]:
    """The network's N x sum(classes) output cut into one N x classes tensor per head."""
    import torch

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


# ----------------------------------------------------------------------------- the evaluation transform


@dataclass(frozen=True)
class EvalTransform:
    """The evaluation preprocessing the trainer used, as data (from model.json):
    shorter side resized to ``resize_size``, then a ``crop_size`` center crop, then
    ``(pixels / 255 - mean) / std`` per channel.

    The trainer applies it with ``torchvision()`` (torchvision v2, on its data loader
    workers); the serving handler with ``pil()`` (Pillow's resampler, which skips work on
    large photos), normalising on the model's device. Both for every ``crop_ratio``: at
    1.0 the shorter side goes to the crop size and the center is cropped, as the
    trainer validated (docs/model-artifact.md).
    """

    channels: int
    crop_size: tuple[int, int]  # (H, W): what the network sees
    crop_ratio: float = 1.0
    interpolation: str = "bilinear"
    mean: tuple[float, ...] | None = None  # None: no normalisation
    std: tuple[float, ...] | None = None

    @classmethod
    def from_spec(cls, spec: dict) -> "EvalTransform":
        channels, height, width = spec.get("input_size") or [3, 224, 224]
        mean, std = spec.get("mean"), spec.get("std")
        return cls(channels=int(channels), crop_size=(int(height), int(width)),
                   crop_ratio=float(spec.get("eval_crop_ratio", 1.0)),
                   mean=tuple(mean) if mean else None, std=tuple(std) if std else None)

    @property
    def resize_size(self) -> int:
        """The shorter side before the center crop."""
        height, width = self.crop_size
        return max(height, width, int(round(min(height, width) / self.crop_ratio)))

    def torchvision(self):
        """PIL image / uint8 tensor -> uint8 C x H x W tensor (the trainer's validation loader)."""
        from torchvision.transforms import InterpolationMode, v2

        return v2.Compose([v2.ToImage(),
                           v2.Resize(self.resize_size, interpolation=InterpolationMode(self.interpolation),
                                     antialias=True),
                           v2.CenterCrop(self.crop_size)])

    def pil(self, img):
        """A decoded PIL image resized and cropped to ``crop_size`` (the serving handler)."""
        from PIL import Image

        height, width = self.crop_size
        resample = Image.Resampling[self.interpolation.upper()]
        short = self.resize_size
        scale = short / min(img.size)
        size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
        img = img.resize(size, resample, reducing_gap=3.0)
        # torchvision's CenterCrop rounds the offset (round half to even): the same pixels as training
        left, top = int(round((img.width - width) / 2.0)), int(round((img.height - height) / 2.0))
        return img.crop((left, top, left + width, top + height))

    def stats(self, device=None, channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as 1 x C x 1 x 1 tensors for pixels scaled to [0, 1]
        (0 and 1 for each of ``channels``, default ``self.channels``, when model.json has none)."""
        import torch

        channels = channels or self.channels
        mean = torch.tensor(self.mean or [0.0] * channels, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std or [1.0] * channels, device=device).view(1, -1, 1, 1)
        return mean, std


def eval_transform(image_size: int, crop_ratio: float):
    """The trainer's validation transform for a square ``image_size`` (``EvalTransform.torchvision``)."""
    return EvalTransform(channels=3, crop_size=(image_size, image_size), crop_ratio=crop_ratio).torchvision()
