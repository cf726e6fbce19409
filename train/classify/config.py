"""Hyperparameters (argparse) and the SageMaker paths the built-in trainer uses.

SageMaker passes hyperparameters as ``--name value`` strings (booleans as ``True``/``False``,
lists as JSON). Every option accepts both spellings, ``--batch-size`` and ``--batch_size``.
A bad value is an argparse error: exit status 2 and a one-line reason, before any work.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from byoc import layout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Paths:
    """Where the trainer reads and writes: the /opt/ml layout (``byoc.layout``), with the
    SM_* directories that the ``train`` entry exports taking precedence.

    ``environ`` is read when a path is asked for (``os.environ`` when not given).
    """

    root: Path
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False, compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Paths":
        environ = os.environ if environ is None else environ
        return cls(layout.ml_root(environ), environ)

    def channel(self, name: str) -> Path:
        return self.root / "input" / "data" / name

    @property
    def model(self) -> Path:
        return Path(self.environ.get("SM_MODEL_DIR") or self.root / "model")

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def output_data(self) -> Path:
        return Path(self.environ.get("SM_OUTPUT_DATA_DIR") or self.output / "data")

    @property
    def checkpoints(self) -> Path:
        return layout.checkpoint_dir(self.environ, self.root)


# ----------------------------------------------------------------------------- value types


def boolean(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "y", "on"):
        return True
    if value in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def auto_or(kind):
    """``auto`` (returned as None) or a value of ``kind``."""
    def parse(text: str):
        if str(text).strip().lower() in ("auto", "", "none"):
            return None
        return kind(text)
    parse.__name__ = f"auto or {kind.__name__}"
    return parse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def name_list(text: str) -> tuple:
    """Comma-separated column names, none empty: ``grapheme_root,vowel_diacritic``."""
    names = tuple(n.strip() for n in str(text).split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a name is repeated in {text!r}")
    return names


def weight_list(text: str) -> tuple | None:
    """``auto`` (None) or comma-separated weights > 0: ``2,1,1``."""
    text = str(text).strip()
    if text.lower() in ("auto", ""):
        return None
    try:
        values = tuple(float(v) for v in (json.loads(text) if text.startswith("[") else text.split(",")))
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(v > 0 for v in values):  # also rejects nan
        raise argparse.ArgumentTypeError(f"weights must be > 0, got {text!r}")
    return values


def pixel_shape(text: str) -> tuple | None:
    """``auto`` (None: square) or HEIGHT,WIDTH (also HEIGHTxWIDTH): ``137,236``."""
    text = str(text).strip().lower()
    if text in ("auto", ""):
        return None
    try:
        h, w = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected positive HEIGHT,WIDTH, got {text!r}")
    return h, w


def optional_name(text: str) -> str | None:
    text = str(text).strip()
    return None if text.lower() in ("auto", "") else text


def default_head_weights(heads: int) -> tuple:
    """Bengali.AI's 2:1:1 for three heads (grapheme root counts double), else equal."""
    return (2.0, 1.0, 1.0) if heads == 3 else (1.0,) * heads


def triple(text: str) -> tuple:
    """Three floats: JSON ``[0.5, 0.5, 0.5]`` or ``0.5,0.5,0.5``."""
    text = str(text).strip()
    try:
        values = json.loads(text) if text.startswith("[") else [float(v) for v in text.split(",")]
        values = tuple(float(v) for v in values)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected three numbers, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers, got {len(values)}")
    return values


# ----------------------------------------------------------------------------- parser


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.classify",
        formatter_class=_Formatter,
        description=(
            "Built-in image classifier for SageMaker training jobs. Reads channels from\n"
            "<root>/input/data/<channel> (root: $BYOC_ML_ROOT or /opt/ml), writes the model to\n"
            "<root>/model (model.pt, model.json, code/inference.py), metrics and curves to\n"
            "<root>/output, checkpoints to $SM_CHECKPOINT_DIR or <root>/checkpoints, and\n"
            "resumes from the newest checkpoint found there. Under torchrun (WORLD_SIZE>1) it\n"
            "trains with DDP; --batch-size is per process."
        ),
        epilog="Exit status: 0 done, 2 bad hyperparameter or input data, 143 stopped by SIGTERM\n"
               "after saving a checkpoint (rerun to resume), 1 any other error.",
    )

    groups = [p]  # options go to the newest group, so --help shows them by topic

    def add(name: str, **kw):
        flags = [f"--{name}"]
        if "-" in name:
            flags.append(f"--{name.replace('-', '_')}")
        groups[-1].add_argument(*flags, **kw)

    groups.append(p.add_argument_group("data"))
    add("data-format", default="auto", choices=["auto", "imagefolder", "cifar", "mnist", "parquet"],
        help="on-disk format of the train channel; auto detects it from the files")
    add("train-channel", default="train", help="channel holding the training data")
    add("val-channel", default="auto",
        help="validation channel; auto: 'val' or 'validation' if present, else the test split "
             "of a CIFAR/MNIST train channel, else --val-fraction of the training data")
    add("val-fraction", type=fraction, default=0.1,
        help="fraction held out (stratified, seeded by --seed) when there is no validation data")
    add("image-size", type=positive_int, default=224, help="side of the square network input")

    groups.append(p.add_argument_group("parquet data (Bengali.AI / Hugging Face datasets style)"))
    add("label-columns", type=name_list, default="label",
        help="parquet or CSV column(s) holding the labels; more than one trains a multi-head model "
             "(one output head per column), e.g. grapheme_root,vowel_diacritic,consonant_diacritic")
    add("head-weights", type=weight_list, default="auto",
        help="per-head weights of the loss and of val_weighted_recall, one per label column; "
             "auto: 2,1,1 for three heads (Bengali.AI), else equal")
    add("image-column", type=optional_name, default="auto",
        help="column of encoded image bytes (binary, or a Hugging Face {bytes, path} struct); "
             "auto: the only such column, else flattened pixel columns named 0..N-1")
    add("pixel-shape", type=pixel_shape, default="auto",
        help="HEIGHT,WIDTH of flattened uint8 pixel columns (Bengali.AI: 137,236); auto: square")
    add("id-column", default="image_id",
        help="column joining the parquet rows to a labels CSV in the channel, used when the label "
             "columns are not in the parquet")
    add("labels-csv", type=optional_name, default="auto",
        help="name of the labels CSV in the channel; auto: the only .csv there")

    groups.append(p.add_argument_group("transforms and loading"))
    add("min-crop-scale", type=fraction, default=0.25,
        help="RandomResizedCrop lower area bound (torchvision's ImageNet recipe uses 0.08)")
    add("hflip", type=boolean, default=True, help="random horizontal flips (turn off for digits/text)")
    add("eval-crop-ratio", type=float, default=0.875,
        help="evaluation: resize to image-size/ratio, then center-crop image-size")
    add("mean", type=triple, default=IMAGENET_MEAN, help="per-channel normalisation mean")
    add("std", type=triple, default=IMAGENET_STD, help="per-channel normalisation std")
    add("workers", type=auto_or(non_negative_int), default="auto",
        help="DataLoader worker processes per rank; auto: CPUs per rank - 1")
    add("data-pipeline", default="auto", choices=["auto", "cpu", "gpu"],
        help="where images are decoded and augmented: cpu (in the DataLoader workers), gpu (workers read "
             "the bytes; nvjpeg decode, RandomResizedCrop and flip on the device, one batch ahead of the "
             "step; PNG/CMYK/grayscale files fall back to the CPU per image); auto: gpu on a CUDA device "
             "when the data are JPEG files, else cpu. The log says which ran and why")

    groups.append(p.add_argument_group("model"))
    add("arch", default="resnet18", help="model name in torchvision or timm")
    add("library", default="auto", choices=["auto", "torchvision", "timm"],
        help="where --arch comes from; auto: torchvision if it has the name, else timm")
    add("pretrained", type=boolean, default=False,
        help="start from a state_dict in the 'pretrained' channel (the head is re-initialised)")
    add("pretrained-file", default=None,
        help="file name inside the pretrained channel (default: the only .pt/.pth/.bin file)")
    add("sync-bn", type=boolean, default=False, help="SyncBatchNorm under DDP (GPU)")

    groups.append(p.add_argument_group("optimisation"))
    add("epochs", type=positive_int, default=10, help="passes over the training data")
    add("batch-size", type=positive_int, default=64, help="images per step per process")
    add("optimizer", default="sgd", choices=["sgd", "adamw", "lamb"],
        help="optimizer: sgd (torch's fused/foreach SGD), adamw (apex FusedAdam when apex is installed "
             "and on a GPU, else torch's fused/foreach AdamW), lamb (apex FusedLAMB on a GPU, else "
             "timm's Lamb); the log says which was chosen and why")
    add("lr", type=auto_or(float), default="auto",
        help="peak learning rate; auto: sgd 0.1 x global batch/256, adamw/lamb 1e-3")
    add("momentum", type=non_negative_float, default=0.9, help="SGD momentum (Nesterov)")
    add("weight-decay", type=auto_or(non_negative_float), default="auto",
        help="weight decay (not on norms and biases); auto: sgd 1e-4, adamw/lamb 0.05")
    add("lr-schedule", default="cosine", choices=["cosine", "onecycle", "constant"],
        help="per-step schedule; cosine decays to 0 after --warmup-epochs of linear warm-up")
    add("warmup-epochs", type=non_negative_float, default=0.0, help="linear warm-up (cosine/constant)")
    add("label-smoothing", type=fraction, default=0.0, help="cross-entropy label smoothing (every head)")
    add("cutmix-alpha", type=non_negative_float, default=0.0,
        help="CutMix with lambda ~ Beta(a, a) on every training batch (0: off); multi-head: one box for "
             "all heads")
    add("mixup-alpha", type=non_negative_float, default=0.0,
        help="MixUp with lambda ~ Beta(a, a) (0: off); with --cutmix-alpha too, each batch gets one "
             "of the two at random")
    add("grad-clip", type=non_negative_float, default=0.0, help="clip gradient norm (0: off)")
    add("amp", default="auto", choices=["auto", "none", "bf16", "fp16"],
        help="mixed precision; auto: bf16 on a GPU that supports it, none on CPU; fp16 is GPU only "
             "(with a GradScaler)")
    add("channels-last", type=auto_or(boolean), default="auto",
        help="channels_last memory format; auto: on for CUDA")
    add("compile", type=boolean, default=False, help="torch.compile the model")

    groups.append(p.add_argument_group("reproducibility and checkpoints"))
    add("seed", type=int, default=0, help="seed for init, split, order and augmentation")
    add("deterministic", type=boolean, default=False,
        help="torch.use_deterministic_algorithms + no cuDNN benchmark: bitwise-reproducible runs")
    add("checkpoint-every-steps", type=non_negative_int, default=0,
        help="save a checkpoint every N steps (0: off); one is also saved after every epoch")
    add("checkpoint-every-seconds", type=non_negative_float, default=600.0,
        help="save a checkpoint every T seconds (0: off)")
    add("keep-checkpoints", type=positive_int, default=2, help="how many checkpoints to keep")
    add("resume", type=boolean, default=True, help="resume from the newest checkpoint if any")
    add("log-interval", type=non_negative_int, default=50, help="progress line every N steps (0: off)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.eval_crop_ratio <= 0 or args.eval_crop_ratio > 1:
        parser.error(f"--eval-crop-ratio must be in (0, 1], got {args.eval_crop_ratio}")
    if any(s <= 0 for s in args.std):
        parser.error("--std values must be > 0")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    heads = len(args.label_columns)
    if args.head_weights is None:
        args.head_weights = default_head_weights(heads)
    elif len(args.head_weights) != heads:
        parser.error(f"--head-weights has {len(args.head_weights)} values for {heads} label column(s) "
                     f"{','.join(args.label_columns)}")
    if args.id_column in args.label_columns:
        parser.error(f"--id-column {args.id_column} is also a label column")
    return args


# The "auto" values that --help promises for --lr and --weight-decay. The learning rate needs
# the world size, known once the processes are up, so the trainer resolves both when it starts.


def resolve_lr(args: argparse.Namespace, world_size: int) -> float:
    """``--lr``; auto: sgd 0.1 x global batch / 256 (the linear scaling rule), adamw/lamb 1e-3."""
    if args.lr is not None:
        return args.lr
    world_batch = args.batch_size * world_size
    return 0.1 * world_batch / 256 if args.optimizer == "sgd" else 1e-3


def resolve_weight_decay(args: argparse.Namespace) -> float:
    """``--weight-decay``; auto: sgd 1e-4, adamw/lamb 0.05."""
    if args.weight_decay is not None:
        return args.weight_decay
    return 1e-4 if args.optimizer == "sgd" else 0.05


class UsageError(Exception):
    """Bad input found after parsing (missing channel, unknown arch, unreadable data): exit 2."""


def help_markdown() -> str:
    """The hyperparameters as Markdown tables by topic, from the parser itself, so
    docs/hyperparameters.md cannot drift from ``--help`` (a unit test compares them)."""
    parser = build_parser()
    out = []
    for group in parser._action_groups[2:]:  # argparse's own positional/options groups first
        out += [f"### {group.title}", "", "| hyperparameter | default | what it does |", "|---|---|---|"]
        for action in group._group_actions:
            default = action.default
            if isinstance(default, tuple):
                default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
            choices = f" ({', '.join(action.choices)})" if action.choices else ""
            text = " ".join(action.help.split()).replace("|", "\\|")
            out.append(f"| `{action.dest.replace('_', '-')}` | `{default}` | {text}{choices} |")
        out.append("")
    return "\n".join(out)
