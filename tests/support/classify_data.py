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


def parity_heads(labels):
    """Two label columns for multi-head tests: the digit and whether it is >= 5."""
    return {"digit": labels, "high": (labels >= 5).astype(np.int64)}


def write_parquet_pixels(root: Path, images, label_columns: dict, files=2, csv_name="train.csv",
                         unlabelled=0) -> Path:
    """Bengali.AI's layout: parquet files of ``image_id`` + uint8 pixel columns "0".."H*W-1" in
    several row groups, labels in a CSV joined on image_id; ``unlabelled`` extra rows have no
    CSV line (Bengali's test images sit in the same folder)."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    n = len(images)
    ids = [f"Train_{i}" for i in range(n)] + [f"Test_{i}" for i in range(unlabelled)]
    flat = images.reshape(n, -1)
    if unlabelled:
        flat = np.concatenate([flat, np.zeros((unlabelled, flat.shape[1]), dtype=np.uint8)])
    for part, rows in enumerate(np.array_split(np.arange(len(ids)), files)):
        columns = {"image_id": pa.array([ids[i] for i in rows])}
        columns.update({str(j): pa.array(flat[rows, j], type=pa.uint8()) for j in range(flat.shape[1])})
        pq.write_table(pa.table(columns), root / f"train_image_data_{part}.parquet",
                       row_group_size=max(1, len(rows) // 3))
    with open(root / csv_name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", *label_columns])
        for i in range(n):
            w.writerow([ids[i], *(int(v[i]) for v in label_columns.values())])
    return root


def write_parquet_bytes(path: Path, images, label_columns: dict, hf_struct=True) -> Path:
    """PNG bytes in an ``image`` column (Hugging Face datasets' {bytes, path} struct, or plain
    binary) and the label columns in the same file."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    encoded = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, format="PNG")
        encoded.append(buf.getvalue())
    image = (pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(encoded)]) if hf_struct
             else pa.array(encoded, type=pa.binary()))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": image, **{k: pa.array(v) for k, v in label_columns.items()}}), path,
                   row_group_size=200)
    return path
