import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from support.classify_data import digits, write_image_folder
from train.classify import data, readers
from train.classify.config import UsageError


def channels(root):
    return lambda name: root / name


def write_cifar10(folder, images, labels):
    """Digits in the CIFAR-10 python format: 32x32 RGB rows of 3072 bytes."""
    folder.mkdir(parents=True)
    big = np.kron(images, np.ones((4, 4), dtype=np.uint8))  # 8x8 -> 32x32
    rows = np.repeat(big[:, None], 3, axis=1).reshape(len(big), -1)
    half = len(rows) // 2
    for name, sl in (("data_batch_1", slice(0, half)), ("test_batch", slice(half, None))):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows[sl], b"labels": labels[sl].tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"digit{i}".encode() for i in range(10)]}, f)


def write_idx(path, array, gz):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    (gzip.open if gz else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())


def test_image_folder_with_split(tmp_path):
    images, labels = digits(per_class=20)
    write_image_folder(tmp_path / "train", images, labels)
    b = readers.load_data(channels(tmp_path), "train", "auto", "auto", 0.25, seed=0)
    assert b.format == "imagefolder" and b.classes == [str(i) for i in range(10)]
    assert (len(b.train), len(b.val)) == (150, 50)
    assert np.bincount(b.val.targets).tolist() == [5] * 10  # stratified
    assert not set(b.train.images) & set(b.val.images)
    img = b.train.image(0)
    assert img.mode == "RGB" and img.size == (8, 8)  # grayscale -> 3 channels


def test_validation_channel_is_aligned_to_train_classes(tmp_path):
    images, labels = digits(per_class=3)
    write_image_folder(tmp_path / "train", images, labels)
    keep = labels >= 7  # a validation set with only some classes
    write_image_folder(tmp_path / "validation", images[keep], labels[keep])
    b = readers.load_data(channels(tmp_path), "train", "auto", "auto", 0.1, seed=0)
    assert len(b.train) == 30 and sorted(set(b.val.targets.tolist())) == [7, 8, 9]


def test_cifar_pickles(tmp_path):
    images, labels = digits(per_class=10)
    write_cifar10(tmp_path / "train" / "cifar-10-batches-py", images, labels)
    b = readers.load_data(channels(tmp_path), "train", "auto", "auto", 0.1, seed=0)
    assert b.format == "cifar" and b.classes[3] == "digit3"
    assert (len(b.train), len(b.val)) == (50, 50)
    x = b.train.image(0)
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8


def test_cifar_refuses_code_in_pickles(tmp_path):
    (tmp_path / "train").mkdir()
    with open(tmp_path / "train" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": print}, f)  # a global outside the allow-list
    with pytest.raises(pickle.UnpicklingError):
        readers.load_data(channels(tmp_path), "train", "auto", "auto", 0.1, seed=0)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    images, labels = digits(per_class=10)
    root = tmp_path / "train"
    root.mkdir()
    ext = ".gz" if gz else ""
    write_idx(root / f"train-images-idx3-ubyte{ext}", images[:80], gz)
    write_idx(root / f"train-labels-idx1-ubyte{ext}", labels[:80], gz)
    write_idx(root / f"t10k-images-idx3-ubyte{ext}", images[80:], gz)
    write_idx(root / f"t10k-labels-idx1-ubyte{ext}", labels[80:], gz)
    b = readers.load_data(channels(tmp_path), "train", "auto", "auto", 0.1, seed=0)
    assert b.format == "mnist" and (len(b.train), len(b.val)) == (80, 20)
    assert b.train.image(0).shape == (3, 8, 8)


def test_missing_or_unknown_channel(tmp_path):
    with pytest.raises(UsageError, match="'train' channel is missing"):
        readers.load_data(channels(tmp_path), "train", "auto", "auto", 0.1, seed=0)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "readme.txt").write_text("hi")
    with pytest.raises(UsageError, match="cannot tell the data format"):
        readers.load_data(channels(tmp_path), "train", "auto", "auto", 0.1, seed=0)


def test_epoch_batches_are_seeded_sharded_and_resumable():
    def batches(rank=0, world=1, epoch=0, start=0):
        s = data.EpochBatches(103, 10, seed=5, rank=rank, world_size=world)
        s.set_epoch(epoch, start)
        return list(s)

    full = batches()
    assert len(full) == 10 and all(len(b) == 10 for b in full)  # short tail dropped
    assert full == batches() and full != batches(epoch=1)
    assert batches(start=4) == full[4:]
    r0, r1 = batches(0, 2), batches(1, 2)
    seen = {i for b in r0 + r1 for i, _ in b}
    assert len(r0) == len(r1) == 5 and len(seen) >= 100


def test_per_sample_seed_makes_augmentation_reproducible():
    images, labels = digits(per_class=2)
    samples = readers.Samples(images, labels, [str(i) for i in range(10)])
    ds = data.TransformedDataset(samples, data.train_transform(16, 0.2, hflip=True))
    a, b, c = ds[(3, 123)][0], ds[(3, 123)][0], ds[(3, 124)][0]
    assert a.shape == (3, 16, 16) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
