"""MNIST in the on-disk format torchvision's datasets.MNIST reads, with generated pixels.

torchvision (download=False) only checks that the four idx files exist under
<root>/MNIST/raw and parses them: random images and labels of any size stand in for the
real 60,000 + 10,000 (nothing here asserts an accuracy).
"""
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dimensions, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_random_mnist(root: Path, train: int = 256, test: int = 64, seed: int = 0) -> Path:
    """<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte; returns root."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    return Path(root)
