"""Reading a channel: ImageFolder trees, CIFAR pickles, MNIST idx and Parquet into ``Samples``.

Readers only read: images stay undecoded (file paths, encoded bytes, or one uint8
NHWC/NHW array), with integer targets. ``load_data`` reads the training channel and finds
the validation data (a channel, the test split of CIFAR/MNIST, or a stratified split).
Decoding, augmentation and batching are train.classify.data's.

- Every image becomes 3-channel (grayscale is repeated): torchvision and timm nets take RGB.
- Multi-head data (Parquet with several label columns) has targets ``[N, heads]``; one label
  column, or any other format, gives targets ``[N]``.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import parquet
from .config import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_NAMES = {"train", "val", "validation", "test"}


# ----------------------------------------------------------------------------- samples


@dataclass
class Samples:
    """Undecoded images (file paths, encoded bytes, or a uint8 NHWC/NHW array) with integer
    targets: ``[N]``, or ``[N, heads]`` for multi-head data (then ``heads`` holds each head's
    ``(name, classes)`` and ``classes`` is empty)."""

    images: list | np.ndarray
    targets: np.ndarray
    classes: list[str]
    origin: str = ""
    heads: list[tuple[str, list[str]]] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, i: int):
        """Sample ``i`` decoded (see ``decode_image``)."""
        return decode_image(self.images[i])

    def subset(self, indices: np.ndarray) -> "Samples":
        images = self.images[indices] if isinstance(self.images, np.ndarray) else [self.images[i] for i in indices]
        return Samples(images, self.targets[indices], self.classes, self.origin, self.heads)


def decode_image(item):
    """One stored image as the transforms take it: a PIL RGB image (a file path or encoded
    bytes) or a uint8 ``[3, H, W]`` tensor (a row of a uint8 array; grayscale repeated).

    The loader workers call it per sample (train.classify.data); a pipeline that decodes on
    the GPU hands them ``Samples.images[i]`` undecoded instead (train.classify.gpu_pipeline).
    """
    if isinstance(item, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(item))
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        return t.expand(3, -1, -1) if t.shape[0] == 1 else t
    from PIL import Image

    with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as img:
        return img.convert("RGB")


@dataclass
class DataBundle:
    train: Samples
    val: Samples | None
    classes: list[str]
    format: str
    notes: list[str] = field(default_factory=list)
    heads: list[tuple[str, list[str]]] | None = None  # multi-head: (name, classes) per head


# ----------------------------------------------------------------------------- formats


def _files(root: Path, max_depth: int = 3):
    root_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(Path(dirpath).parts) - root_depth >= max_depth:
            dirnames[:] = []
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def detect_format(root: Path) -> str:
    names = [p.name for p in _files(root)]
    if any(n.lower().endswith(parquet.PARQUET_SUFFIXES) for n in names):
        return "parquet"
    if any("idx3-ubyte" in n for n in names):
        return "mnist"
    if any(n.startswith("data_batch_") for n in names) or ("train" in names and "meta" in names):
        return "cifar"
    if any(n.lower().endswith(IMAGE_EXTENSIONS) for n in names):
        return "imagefolder"
    raise UsageError(f"cannot tell the data format of {root}: no image files, CIFAR batches, "
                     "MNIST idx or parquet files found (set --data-format, or check the channel)")


# -- ImageFolder


def read_image_folder(root: Path) -> Samples:
    classes, paths, targets = [], [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = [f for f in _files(class_dir, max_depth=8) if f.name.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            continue
        classes.append(class_dir.name)
        paths += [str(f) for f in files]
        targets += [len(classes) - 1] * len(files)
    if len(classes) < 2:
        raise UsageError(f"{root}: an ImageFolder tree needs at least 2 class folders with images, "
                         f"found {len(classes)}")
    return Samples(paths, np.asarray(targets, dtype=np.int64), classes, str(root))


def _align_classes(samples: Samples, classes: list[str]) -> Samples:
    """Re-number a validation ImageFolder's targets to the training classes."""
    unknown = sorted(set(samples.classes) - set(classes))
    if unknown:
        raise UsageError(f"{samples.origin}: validation classes not in the training data: {unknown[:5]}")
    remap = np.asarray([classes.index(c) for c in samples.classes], dtype=np.int64)
    return Samples(samples.images, remap[samples.targets], classes, samples.origin)


# -- CIFAR-10/100 python pickles


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only what they hold (no arbitrary code on load)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("collections", "OrderedDict")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")


def _load_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        d = _ArrayUnpickler(f, encoding="bytes").load()
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _load_pickle(path)
    labels = d.get("labels", d.get("fine_labels"))
    if labels is None or "data" not in d:
        raise UsageError(f"{path}: not a CIFAR batch (no 'data' and 'labels'/'fine_labels')")
    data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return data, np.asarray(labels, dtype=np.int64)


def read_cifar(root: Path) -> tuple[Samples, Samples | None]:
    files = {p.name: p for p in _files(root)}
    if "data_batch_1" in files:  # CIFAR-10
        train_files = [files[n] for n in sorted(files) if n.startswith("data_batch_")]
        test_file, meta_file, names_key = files.get("test_batch"), files.get("batches.meta"), "label_names"
    else:  # CIFAR-100
        train_files = [files["train"]]
        test_file, meta_file, names_key = files.get("test"), files.get("meta"), "fine_label_names"
    parts = [_cifar_batch(p) for p in train_files]
    data = np.concatenate([d for d, _ in parts])
    targets = np.concatenate([t for _, t in parts])
    num_classes = int(targets.max()) + 1
    classes = [str(i) for i in range(num_classes)]
    if meta_file is not None:
        names = _load_pickle(meta_file).get(names_key)
        if names and len(names) >= num_classes:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train = Samples(data, targets, classes, str(root))
    test = None
    if test_file is not None:
        tdata, ttargets = _cifar_batch(test_file)
        test = Samples(tdata, ttargets, classes, str(test_file))
    return train, test


# -- MNIST idx


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UsageError(f"{path}: not an unsigned-byte idx file")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UsageError(f"{path}: idx header says {dims}, file holds {data.size} bytes")
    return data.reshape(dims).copy()  # writable, for torch.from_numpy


def read_mnist(root: Path) -> tuple[Samples, Samples | None]:
    files = list(_files(root))

    def find(prefix: str, kind: str) -> Path | None:
        for p in files:
            if p.name.startswith(prefix) and kind in p.name:
                return p
        return None

    def pair(prefix: str) -> Samples | None:
        images, labels = find(prefix, "idx3-ubyte"), find(prefix, "idx1-ubyte")
        if images is None or labels is None:
            return None
        x, y = read_idx(images), read_idx(labels).astype(np.int64)
        if len(x) != len(y):
            raise UsageError(f"{images}: {len(x)} images but {len(y)} labels")
        return Samples(x, y, [], str(images))

    train = pair("train")
    if train is None:
        raise UsageError(f"{root}: no train-images-idx3-ubyte / train-labels-idx1-ubyte pair")
    test = pair("t10k") or pair("test")
    classes = [str(i) for i in range(int(train.targets.max()) + 1)]
    train.classes = classes
    if test is not None:
        test.classes = classes
    return train, test


# -- Parquet


def read_parquet(root: Path, opts: parquet.ParquetOptions,
                 train: Samples | None = None) -> Samples:
    """A parquet channel as Samples; ``train`` given: encode the labels with its classes."""
    images, labels, note = parquet.read_parquet(root, opts)
    known = None
    if train is not None:
        known = [c for _, c in train.heads] if train.heads else [train.classes]
    targets, classes = parquet.encode_labels(labels, known)
    if len(opts.label_columns) == 1:
        return Samples(images, targets[:, 0], classes[0], f"{root}: {note}")
    heads = list(zip(opts.label_columns, classes))
    return Samples(images, targets, [], f"{root}: {note}", heads)


# ----------------------------------------------------------------------------- load + split


def stratified_split(targets: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``val_fraction`` of each class, chosen by a seeded shuffle.
    Multi-head targets are stratified on the first head."""
    targets = targets[:, 0] if targets.ndim == 2 else targets
    g = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        g.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        n_val = min(n_val, len(idx) - 1)  # keep at least one training sample per class
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def _read(root: Path, fmt: str, opts: parquet.ParquetOptions | None = None,
          train: Samples | None = None) -> tuple[Samples, Samples | None]:
    if fmt == "parquet":
        return read_parquet(root, opts or parquet.ParquetOptions(), train), None
    if fmt == "cifar":
        return read_cifar(root)
    if fmt == "mnist":
        return read_mnist(root)
    subdirs = {p.name for p in root.iterdir() if p.is_dir()}
    if "train" in subdirs and subdirs <= SPLIT_NAMES:  # one channel with train/ and val/ inside
        train = read_image_folder(root / "train")
        val_dir = next((root / n for n in ("val", "validation", "test") if n in subdirs), None)
        return train, (_align_classes(read_image_folder(val_dir), train.classes) if val_dir else None)
    return read_image_folder(root), None


def load_data(channel, train_channel: str, val_channel: str, data_format: str,
              val_fraction: float, seed: int, parquet_options: parquet.ParquetOptions | None = None) -> DataBundle:
    """Read the training channel (and a validation channel or split) into ``Samples``.

    ``channel(name) -> Path``. Raises ``UsageError`` for a missing or unreadable channel.
    """
    root = channel(train_channel)
    if not root.is_dir() or not any(root.iterdir()):
        raise UsageError(f"the '{train_channel}' channel is missing or empty ({root})")
    fmt = detect_format(root) if data_format == "auto" else data_format
    train, val = _read(root, fmt, parquet_options)
    notes = [f"format={fmt} train={train.origin if fmt == 'parquet' else root}"]

    val_names = ["val", "validation"] if val_channel == "auto" else [val_channel]
    val_root = next((channel(n) for n in val_names if channel(n).is_dir() and any(channel(n).iterdir())), None)
    if val_channel != "auto" and val_root is None:
        raise UsageError(f"the '{val_channel}' channel is missing or empty ({channel(val_channel)})")
    if val_root is not None:
        val, _ = _read(val_root, fmt, parquet_options, train)
        val = _align_classes(val, train.classes) if fmt == "imagefolder" else val
        notes.append(f"validation from channel {val_root.name}")
    elif val is not None:
        notes.append(f"validation from the test split in {val.origin}")
    elif val_fraction > 0:
        train_idx, val_idx = stratified_split(train.targets, val_fraction, seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
        notes.append(f"validation: {val_fraction:.0%} of the training data, stratified, seed {seed}")
    else:
        notes.append("no validation data")
    if val is not None and len(val) and not train.heads and int(val.targets.max()) >= len(train.classes):
        raise UsageError("validation labels exceed the training classes")
    return DataBundle(train, val, train.classes, fmt, notes, train.heads)
