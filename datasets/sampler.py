"""The order of training samples: a seeded permutation per epoch, split across processes."""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct, reproducible seed for one use of one sample."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 62)


class EpochSampler(Sampler):
    """Yields ``(index, seed)`` for this process's share of a seeded permutation.

    Like ``DistributedSampler`` with ``drop_last``: every process gets the same number of
    whole batches (a multiple of ``accum_steps``, the micro-batches of one optimizer step;
    those of one step together are the samples a single batch of ``accum_steps`` times the
    size would hold). ``set_epoch(epoch, start_batch)`` makes the order a function of the epoch
    alone and skips the batches already done (mid-epoch resume). Seeds travel with the
    indices, so augmentation does not depend on which worker loads an item.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, accum_steps: int = 1):
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_batch = 0, 0
        # Whole optimizer steps only: each takes accum_steps micro-batches per process.
        steps = num_samples // (batch_size * world_size * accum_steps)
        self.batches_per_epoch = steps * accum_steps

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        # Global batch k is order[k*B*W:(k+1)*B*W] (as one process with batch B*W would
        # see it); this process takes its slice of B from each.
        global_batch = self.batch_size * self.world_size
        for batch in range(self.start_batch, self.batches_per_epoch):
            first = batch * global_batch + self.rank * self.batch_size
            for index in order[first:first + self.batch_size]:
                yield index, sample_seed(self.seed, self.epoch, index)
