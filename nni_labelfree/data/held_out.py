"""A seeded split of an image dataset into the images a search trains on and the images held out for selection.

Pi-NAS selects architectures by a linear classifier's accuracy (or a label-free contrastive criterion) on its frozen
supernet (Peng et al., "Pi-NAS: Improving Neural Architecture Search by Reducing Supernet Training Consistency
Shift", ICCV 2021, section 3.3); the accuracy means something only on images neither the supernet nor the classifier
trained on. Image sources store their images in a fixed order (class by class for folders), so the held-out images
are drawn at random from a generator seeded by the search's seed, never taken from the front.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch.utils.data import Dataset, Subset

from .sources import derive_seed

__all__ = ['DatasetPart', 'spread_indices', 'split_held_out']

_logger = logging.getLogger(__name__)

_HELD_OUT_STREAM = 0x484F  # keeps this draw apart from every other use of the search's seed


class DatasetPart(Subset):
    """A :class:`~torch.utils.data.Subset` that keeps its dataset's ``num_true_classes`` (None when unlabeled)."""

    @property
    def num_true_classes(self) -> Optional[int]:
        return getattr(self.dataset, 'num_true_classes', None)


def spread_indices(size: int, count: int, seed: int) -> list[int]:
    """``min(count, size)`` distinct indices of ``range(size)`` drawn at random (seeded), in ascending order.

    Image sources store images in a fixed order, class by class for folders, so the first ``count`` would cover a
    class or two; a seeded draw spreads the selection over the whole dataset."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:min(count, size)].tolist())


def split_held_out(dataset: Dataset, fraction: float, seed: int) -> tuple[DatasetPart, DatasetPart]:
    """``(train, held_out)``: a seeded random ``fraction`` of ``dataset`` held out, the rest for training.

    Parameters
    ----------
    dataset
        Any map-style dataset with ``len``.
    fraction
        Share held out, in ``(0, 1)``; at least one image lands on each side.
    seed
        The search's seed; the same seed gives the same split. Both parts keep ascending index order.

    Raises
    ------
    ValueError
        When ``fraction`` is outside ``(0, 1)`` or the dataset is too small to leave an image on each side.
    """
    if not 0 < fraction < 1:
        raise ValueError(f'held-out fraction must be in (0, 1), got {fraction!r}.')
    total = len(dataset)
    count = int(round(total * fraction))
    if count < 1 or count >= total:
        raise ValueError(f'Holding out {fraction:.0%} of {total} images leaves {count} held out and {total - count} '
                         'to train on; use more images or another held_out_fraction (0 selects on the training '
                         'images themselves).')
    held_out = spread_indices(total, count, derive_seed(seed, _HELD_OUT_STREAM))
    kept = set(held_out)
    train = [i for i in range(total) if i not in kept]
    _logger.info('Held out %d of %d images for selection (seed %d).', count, total, seed)
    return DatasetPart(dataset, train), DatasetPart(dataset, held_out)
