"""Real small data for the built-in trainer's tests: scikit-learn's 1,797 8x8 digits."""

from pathlib import Path

import numpy as np
import pytest


def digits(per_class=None):
    """(uint8 images [N, 8, 8] scaled to 0..255, int labels), optionally the first k per class."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    d = sklearn_datasets.load_digits()
    images = (d.images * (255 / 16)).round().astype(np.uint8)
    labels = d.target.astype(np.int64)
    if per_class:
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
        images, labels = images[np.sort(keep)], labels[np.sort(keep)]
    return images, labels


def write_image_folder(root: Path, images, labels) -> Path:
    from PIL import Image

    for i, (img, y) in enumerate(zip(images, labels)):
        d = root / str(int(y))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(d / f"{i:04d}.png")
    return root
