"""True labels as a label source: the supervised control of label-free searches (e.g. DARTS with labels)."""
from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

from torch.utils.data import Dataset

__all__ = ['TrueLabelDataset']

_logger = logging.getLogger(__name__)


class TrueLabelDataset(Dataset):
    """Pass ``(image, label)`` items through, refusing unlabeled ones, with the label-source attributes.

    Parameters
    ----------
    base
        Dataset of ``(image, label)`` items with labels in ``[0, num_classes)``.
    num_classes
        Class count; defaults to ``base.num_true_classes`` or, failing that, the largest label + 1.
    """

    collate_fn = None

    def __init__(self, base: Dataset, num_classes: Optional[int] = None):
        self.base = base
        if num_classes is None:
            num_classes = getattr(base, 'num_true_classes', None) or \
                max(self._label(base[i]) for i in range(len(base))) + 1
        self.num_classes = int(num_classes)

    @staticmethod
    def _label(item: Any) -> int:
        if not isinstance(item, (tuple, list)) or len(item) < 2 or int(item[1]) < 0:
            raise ValueError('The supervised control needs labeled images, but the dataset has unlabeled items '
                             '(label -1 or bare images). Use a labeled source such as cifar10, or a label-free task.')
        return int(item[1])

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        item = self.base[index]
        return item[0], self._label(item)
