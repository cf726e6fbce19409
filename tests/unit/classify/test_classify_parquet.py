"""Parquet channels: Bengali.AI's pixel columns + labels CSV, Hugging Face image bytes, errors."""

import numpy as np
import pytest
import torch

from byoc import artifact
from support.classify_data import digits, parity_heads, write_parquet_bytes, write_parquet_pixels
from train.classify import data, readers
from train.classify.config import UsageError
from train.classify.parquet import ParquetOptions

pytest.importorskip("pyarrow")


def channels(root):
    return lambda name: root / name


def load(root, **opts):
    return readers.load_data(channels(root), "train", "auto", "auto", 0.2, seed=0,
                          parquet_options=ParquetOptions(**opts))


def test_bengali_layout_pixels_and_csv_multi_head(tmp_path):
    images, labels = digits(per_class=10)
    wide = np.concatenate([images, images[:, :, :4]], axis=2)  # 8 x 12: not square
    write_parquet_pixels(tmp_path / "train", wide, parity_heads(labels), files=2, unlabelled=7)
    b = load(tmp_path, label_columns=("digit", "high"), pixel_shape=(8, 12))
    assert b.format == "parquet"
    assert b.heads == [("digit", [str(i) for i in range(10)]), ("high", ["0", "1"])]
    assert "7 unlabelled rows skipped" in b.notes[0] and "labels from the CSV joined on image_id" in b.notes[0]
    assert (len(b.train), len(b.val)) == (80, 20)
    assert b.train.targets.shape == (80, 2)
    everything = np.concatenate([b.train.targets, b.val.targets])
    assert sorted(map(tuple, everything.tolist())) == sorted(zip(labels.tolist(), (labels >= 5).astype(int).tolist()))
    # every image comes back with its own labels, across files and row groups
    for i in range(len(b.train)):
        digit = b.train.targets[i, 0]
        original = np.flatnonzero(labels == digit)
        assert any(np.array_equal(b.train.images[i], wide[j]) for j in original)
    x, y = data.TransformedDataset(b.train, artifact.eval_transform(16, 1.0))[(0, None)]
    assert x.shape == (3, 16, 16) and y.dtype == torch.int64 and y.shape == (2,)


def test_hugging_face_bytes_struct_and_plain_binary(tmp_path):
    images, labels = digits(per_class=5)
    write_parquet_bytes(tmp_path / "train" / "part-0.parquet", images[:25], {"label": labels[:25]})
    write_parquet_bytes(tmp_path / "train" / "part-1.parquet", images[25:], {"label": labels[25:]}, hf_struct=False)
    b = load(tmp_path)
    assert b.heads is None and b.classes == [str(i) for i in range(10)]
    assert len(b.train) + len(b.val) == 50 and b.train.targets.ndim == 1
    assert "image bytes in 'image'" in b.notes[0]
    img = b.train.image(0)
    assert img.mode == "RGB" and img.size == (8, 8)


def test_validation_channel_uses_training_classes(tmp_path):
    images, labels = digits(per_class=4)
    heads = parity_heads(labels)
    write_parquet_bytes(tmp_path / "train" / "d.parquet", images, heads)
    keep = labels >= 7
    write_parquet_bytes(tmp_path / "validation" / "d.parquet", images[keep], {k: v[keep] for k, v in heads.items()})
    b = load(tmp_path, label_columns=("digit", "high"))
    assert len(b.train) == 40 and b.val.targets[:, 0].tolist() == (labels[keep]).tolist()
    assert set(b.val.targets[:, 1].tolist()) == {1}  # "1" of the training classes ["0", "1"]

    odd = images[:2]
    write_parquet_bytes(tmp_path / "validation" / "d.parquet", odd, {"digit": np.array([3, 11]), "high": np.array([0, 1])})
    with pytest.raises(UsageError, match="validation label '11'"):
        load(tmp_path, label_columns=("digit", "high"))


@pytest.mark.parametrize("opts, writer, reason", [
    ({"label_columns": ("grapheme_root",)}, "pixels", r"train.csv: no column\(s\) \['grapheme_root'\]"),
    ({"label_columns": ("grapheme_root",)}, "bytes", r"\['grapheme_root'\] are not in the parquet .* no single .csv"),
    ({"label_columns": ("digit",), "id_column": "row"}, "pixels", "no id column 'row'"),
    ({"label_columns": ("digit",), "pixel_shape": (8, 9)}, "pixels", "needs 72 pixel columns, the parquet has 64"),
    ({"label_columns": ("digit",), "labels_csv": "other.csv"}, "pixels", "--labels-csv other.csv is not"),
    ({"label_columns": ("digit",), "image_column": "photo"}, "bytes", "no image column 'photo'"),
    ({"label_columns": ("digit",), "image_column": "high"}, "bytes", "expected binary"),
])
def test_unusable_parquet_stops_with_the_reason(tmp_path, opts, writer, reason):
    images, labels = digits(per_class=2)
    if writer == "pixels":
        write_parquet_pixels(tmp_path / "train", images, parity_heads(labels), files=1)
    else:
        write_parquet_bytes(tmp_path / "train" / "d.parquet", images, parity_heads(labels))
    with pytest.raises(UsageError, match=reason):
        load(tmp_path, **opts)


def test_non_square_pixels_need_pixel_shape(tmp_path):
    images, labels = digits(per_class=2)
    write_parquet_pixels(tmp_path / "train", images[:, :, :6], parity_heads(labels), files=1)
    with pytest.raises(UsageError, match="48 pixel columns are not a square image"):
        load(tmp_path, label_columns=("digit",))
    assert load(tmp_path, label_columns=("digit",), pixel_shape=(8, 6)).train.images.shape[1:] == (8, 6)
