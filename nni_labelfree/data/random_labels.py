"""Random labels for RLNAS: wrap any image dataset and replace its labels with random ones.

Reference: Xuanyang Zhang, Pengfei Hou, Xiangyu Zhang, Jian Sun, "Neural Architecture Search with Random
Labels", CVPR 2021. RLNAS trains the supernet on images whose labels are drawn at random (once, like the paper's
``randint(0, n_classes, N)``) and ranks architectures by the angle their weights travelled.
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

import torch
from torch.utils.data import Dataset

from .epochs import EpochSelectable, check_epoch
from .sources import derive_seed

__all__ = ['RANDOM_LABEL_MODES', 'RandomLabelDataset', 'random_label_dataset']

_logger = logging.getLogger(__name__)

RANDOM_LABEL_MODES: Tuple[str, ...] = ('uniform_once', 'shuffle_once', 'uniform_per_iteration',
                                       'shuffle_per_iteration')


def _split_item(item: Any) -> Tuple[Any, Optional[Any]]:
    """``(image, label, ...)`` -> (image, label); a bare image -> (image, None)."""
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def _as_label(label: Any) -> int:
    if label is None:
        return -1
    try:
        return int(label)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f'the base dataset returned a label {label!r} that is not a class index; shuffle modes '
                         "need integer labels (or none at all). Use mode='uniform_once' instead.") from exc


def _true_labels(base: Dataset) -> torch.Tensor:
    """The base's true labels (-1 where absent): its ``targets`` when they match its length, else by iterating.

    A ``Subset`` of a torchvision dataset has no ``targets`` of its own (and its ``dataset.targets`` has the
    full length), so it is iterated, which decodes every image once.
    """
    targets = getattr(base, 'targets', None)
    if targets is not None and len(targets) == len(base):
        return torch.as_tensor(list(targets) if not torch.is_tensor(targets) else targets, dtype=torch.int64)
    _logger.info('Reading the true labels of %d items by iterating the base dataset', len(base))
    return torch.tensor([_as_label(_split_item(base[i])[1]) for i in range(len(base))], dtype=torch.int64)


class RandomLabelDataset(EpochSelectable, Dataset):
    """Pair every image of ``base`` with a random label in ``[0, num_classes)``.

    The wrapper returns the random label itself and never writes to ``base.targets``: torchvision's
    ``ImageFolder`` reads labels from ``samples``, so overwriting ``targets`` silently keeps the true labels.

    Modes
    -----
    ``'uniform_once'`` (default, as in RLNAS)
        One label per index, drawn uniformly once from ``seed``.
    ``'shuffle_once'``
        A random permutation of the base's true labels, so the label histogram is kept. When the base has no
        labels (items are bare images or every label is -1), the balanced assignment
        ``arange(N) % num_classes`` is permuted instead.
    ``'uniform_per_iteration'``, ``'shuffle_per_iteration'``
        As above but redrawn for every epoch: :meth:`set_epoch` selects the labels of epoch ``e``, drawn from a
        generator seeded from ``(seed, e)``. With a ``DataLoader`` using worker processes, call ``set_epoch``
        before iterating and leave ``persistent_workers`` off, so workers see the new labels.

    Parameters
    ----------
    base
        Dataset whose items are ``(image, label)`` or a bare ``image``; its labels are only read by the
        shuffle modes.
    num_classes
        Number of random classes (at least 2), the width of the classifier being trained.
    mode
        One of :data:`RANDOM_LABEL_MODES`.
    seed
        Non-negative seed; the same seed gives the same labels.
    """

    def __init__(self, base: Dataset, num_classes: int, mode: str = 'uniform_once', seed: int = 0) -> None:
        if mode not in RANDOM_LABEL_MODES:
            raise ValueError(f'unknown random-label mode {mode!r}; expected one of {list(RANDOM_LABEL_MODES)}.')
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f'num_classes must be an integer >= 2 (the classifier width), got {num_classes!r}.')
        derive_seed(seed)  # validates the seed early
        self.base, self.num_classes, self.mode, self.seed = base, int(num_classes), mode, int(seed)
        self._size = len(base)
        if self._size == 0:
            raise ValueError('the base dataset is empty; random labels need at least one image.')
        self._label_pool = self._make_label_pool() if mode.startswith('shuffle') else None
        self._epoch = 0
        self._labels = self._draw_labels(0)

    @property
    def per_iteration(self) -> bool:
        """Whether labels are redrawn for every epoch."""
        return self.mode.endswith('_per_iteration')

    @property
    def labels(self) -> torch.Tensor:
        """The current random labels, an int64 tensor of length ``len(self)`` (a copy)."""
        return self._labels.clone()

    def set_epoch(self, epoch: int) -> None:
        """Select the labels of ``epoch`` in the per-iteration modes; a no-op in the ``*_once`` modes.

        :attr:`epoch` is the epoch whose labels are current (always 0 for the ``*_once`` modes).
        """
        check_epoch(epoch)
        if self.per_iteration and epoch != self._epoch:
            self._epoch = int(epoch)
            self._labels = self._draw_labels(self._epoch)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        image, _ = _split_item(self.base[index])
        return image, int(self._labels[index])

    def _make_label_pool(self) -> torch.Tensor:
        """Labels the shuffle modes permute: the true labels, or a balanced assignment when there are none."""
        true_labels = _true_labels(self.base)
        if bool((true_labels < 0).all()):
            _logger.info('Base has no labels; shuffling a balanced assignment over %d classes', self.num_classes)
            return torch.arange(self._size, dtype=torch.int64) % self.num_classes
        if bool((true_labels < 0).any()):
            raise ValueError('the base dataset has labels for some items and -1 (none) for others; shuffle modes '
                             "need all or none labeled. Use mode='uniform_once' or fix the labels.")
        if int(true_labels.max()) >= self.num_classes:
            raise ValueError(f'the base has true labels up to {int(true_labels.max())} but num_classes='
                             f'{self.num_classes}; shuffled labels must fit the classifier. Pass num_classes >= '
                             f"{int(true_labels.max()) + 1} or use mode='uniform_once'.")
        return true_labels

    def _draw_labels(self, epoch: int) -> torch.Tensor:
        seed = derive_seed(self.seed, epoch) if self.per_iteration else derive_seed(self.seed)
        generator = torch.Generator().manual_seed(seed)
        if self._label_pool is None:
            return torch.randint(0, self.num_classes, (self._size,), generator=generator, dtype=torch.int64)
        return self._label_pool[torch.randperm(self._size, generator=generator)]


def random_label_dataset(base: Dataset, num_classes: int, mode: str = 'uniform_once',
                         seed: int = 0) -> RandomLabelDataset:
    """Wrap ``base`` so every image gets a random label; see :class:`RandomLabelDataset`."""
    return RandomLabelDataset(base, num_classes, mode=mode, seed=seed)
