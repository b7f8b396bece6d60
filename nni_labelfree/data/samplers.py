"""Samplers whose order is a pure function of ``(seed, epoch)``, so a resumed search sees the same batches."""
from __future__ import annotations

import logging
from typing import Iterator

import torch
from torch.utils.data import Sampler

from .epochs import EpochSelectable
from .sources import derive_seed

__all__ = ['EpochShuffleSampler']

_logger = logging.getLogger(__name__)

# Mixed into the shuffle seeds so they never coincide with the random-label seeds derived from the same base seed.
_SHUFFLE_STREAM = 0x5348_5546


class EpochShuffleSampler(EpochSelectable, Sampler[int]):
    """A random order of ``range(size)`` that is a pure function of ``(seed, epoch)``.

    A ``RandomSampler`` with a generator seeded once draws epoch ``e``'s order after every earlier epoch's, so a
    search resumed at epoch ``e`` would see other batches than an uninterrupted one. Call :meth:`set_epoch` before
    iterating (Lightning does for a sampler it finds in a loader, and so do
    RLNAS's and UnNAS's Lightning modules). Under DDP Lightning wraps it in a
    ``DistributedSamplerWrapper``: each rank reads its own shard of the same order. :attr:`epoch` is the epoch
    whose order is drawn (0-based, 0 until :meth:`set_epoch`).

    Parameters
    ----------
    size
        Number of items (``len(dataset)``).
    seed
        Non-negative base seed.
    """

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise ValueError(f'EpochShuffleSampler needs at least one item, got size={size}.')
        derive_seed(seed)  # validates the seed early
        self.size, self.seed, self._epoch = int(size), int(seed), 0

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, _SHUFFLE_STREAM, self.epoch))
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size
