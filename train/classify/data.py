"""Training data on its way to the step: decode, augment, batch.

Samples come from train.classify.readers. Design choices, and why:

- Images leave the workers as uint8 ``[3, S, S]`` tensors; the float conversion and the
  normalisation happen on the device in the loop (4x less to copy, and on a GPU it is free).
- Determinism that survives a resume, with any number of workers: the batch sampler
  yields ``(index, sample_seed)`` pairs, and each sample's augmentation runs under its own
  seed, drawn from (``--seed``, epoch). Order and augmentation of every epoch are therefore
  a pure function of the seed; a resumed run skips the batches it already did (no data is
  loaded for them) and sees exactly what the uninterrupted run saw.
"""

from __future__ import annotations

import os
import signal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .readers import Samples


# ----------------------------------------------------------------------------- transforms


def train_transform(image_size: int, min_crop_scale: float, hflip: bool):
    from torchvision.transforms import v2

    steps = [v2.ToImage(), v2.RandomResizedCrop(image_size, scale=(min_crop_scale, 1.0), antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


class TransformedDataset(Dataset):
    """``dataset[(index, seed)]`` -> (uint8 [3,S,S] tensor, target); the transform runs under ``seed``."""

    def __init__(self, samples: Samples, transform):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.samples.image(index)
        if seed is None:
            x = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                x = self.transform(image)
        target = self.samples.targets[index]
        target = torch.from_numpy(target.copy()) if target.ndim else int(target)
        return torch.as_tensor(x).contiguous(), target


# ----------------------------------------------------------------------------- batching


class EpochBatches(Sampler):
    """Batches of ``(index, sample_seed)`` for one rank; order and seeds from (seed, epoch).

    Like DistributedSampler: every rank gets the same number of batches (the permutation
    is padded by wrapping). ``set_epoch(epoch, start_batch)`` skips batches already done.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        per_rank = -(-n // world_size)
        # never drop everything; a batch of one breaks BatchNorm, so drop a short tail when we can
        self.drop_last = drop_last and per_rank >= batch_size
        self.per_rank = per_rank
        self.epoch, self.start_batch = 0, 0

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.per_rank, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        total = self.per_rank * self.world_size
        if total > self.n:
            order = torch.cat([order, order[: total - self.n]])
        mine = order[self.rank::self.world_size].tolist()
        seeds = seeds[order[self.rank::self.world_size]].tolist()
        for b in range(self.start_batch, self.batches_per_epoch()):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, len(mine))
            yield [(mine[i], seeds[i]) for i in range(lo, hi)]


class ShardBatches(Sampler):
    """Evaluation: indices ``rank, rank + world, ...`` in order, no padding, no seeds."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, n, world_size))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        for lo in range(0, len(self.indices), self.batch_size):
            yield self.indices[lo:lo + self.batch_size]


def default_workers(local_world_size: int = 1) -> int:
    """The CPUs of this rank's share, less one for the rank itself: no fixed cap, since on a GPU
    host with the CPU pipeline the workers' decoding is what bounds the step (issue 10)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, cpus // max(1, local_world_size) - 1)


def ignore_sigterm(worker_id: int) -> None:
    """Workers leave SIGTERM to their rank: the launcher signals the whole process group, and a
    worker killed by it would crash the rank before it can save its checkpoint. Workers still
    exit when the loader shuts down or when the rank dies (PyTorch's worker watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_sampler: Sampler, workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                      worker_init_fn=ignore_sigterm if workers > 0 else None,
                      # its own generator: creating an iterator must not draw from the global RNG,
                      # or a resumed run (one iterator more) would diverge from an uninterrupted one
                      generator=torch.Generator().manual_seed(0))
