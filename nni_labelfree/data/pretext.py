"""UnNAS pretext tasks as label sources: rotation, colorization and jigsaw, each wrapping any image dataset.

Reference: Chenxi Liu, Piotr Dollár, Kaiming He, Ross Girshick, Alan Yuille, Saining Xie, "Are Labels Necessary
for Neural Architecture Search?", ECCV 2020. The data side follows ``pycls/datasets/prepare.py`` of
facebookresearch/unnas as described in docs/methods.md section 2.1. The tasks do not augment; the paper's
augmentation of each image before its pretext transform is a wrapper of the base,
:class:`~nni_labelfree.data.CropFlipDataset` (random crop of the zero-padded image, horizontal flip), which
:class:`~nni_labelfree.strategies.UnNAS` puts under every task (``augment=True``, the default).

Each task wraps a dataset whose items are ``(image, label)`` or a bare ``image`` (a float tensor ``[C, H, W]``,
as :func:`nni_labelfree.data.image_source` yields), ignores the labels, and is deterministic given its seed:

============== ========================================== ============================== =========== ===========
task           item                                       target                         num_classes collate
============== ========================================== ============================== =========== ===========
rotation       ``[4, C, H, W]``: 0/90/180/270 deg CCW     ``tensor([0, 1, 2, 3])``       4           rotation_collate
colorization   L channel ``[1, H, W]``, normalised        ab bin per pixel ``[H, W]``    313         default
jigsaw         ``[G*G, C, t, t]`` shuffled tiles          permutation index ``y``        K           default
============== ========================================== ============================== =========== ===========

Expected heads (another module adapts the network; these are the paper's)
--------------------------------------------------------------------------
rotation
    Pooled features -> ``Linear(C, 4)``. :func:`rotation_collate` flattens ``[B, 4, ...]`` to ``[4B, ...]``, so
    the batch size counts images and the network sees 4x as many inputs.
colorization
    Needs spatial features ``[B, C, h, w]``: a 1x1 conv ``C -> 313``, bilinear upsampling (align_corners=True) to
    the input ``H x W``, then a pixel-wise cross-entropy against the ``[B, H, W]`` target. The stem takes 1 channel.
jigsaw
    Siamese: the shared trunk runs on the ``B * G^2`` tiles as one batch (``[B, G^2, C, t, t]`` reshaped to
    ``[B*G^2, C, t, t]``), the pooled features are concatenated in slot order to ``[B, C*G^2]``, then
    ``Linear(C*G^2, K)``. Tile k sits in slot ``perm[y][k]``; :func:`unshuffle` restores grid order.

:func:`pretext_task` gives this metadata as a :class:`PretextTask`; every dataset also carries it as ``.task``,
with ``.num_classes`` and ``.collate_fn``.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Dict, Optional

from torch.utils.data import Dataset

from .pretext_base import PretextTask
from .pretext_colorization import ColorizationDataset, colorization_task
from .pretext_jigsaw import (DEFAULT_NUM_PERMUTATIONS, JIGSAW_GRIDS, JigsawDataset, hamming_permutations,
                             jigsaw_geometry, jigsaw_task, shuffle_tiles, unshuffle)
from .pretext_lab import NUM_AB_BINS, ab_bins, bin_to_ab, lab_to_rgb, quantize_ab, rgb_to_lab
from .pretext_rotation import NUM_ROTATIONS, RotationDataset, rotate_image, rotation_collate, rotation_task

__all__ = [
    'PRETEXT_TASKS', 'PretextTask', 'pretext_task', 'pretext_dataset', 'list_pretext_tasks',
    'RotationDataset', 'rotation_collate', 'rotate_image', 'NUM_ROTATIONS',
    'ColorizationDataset', 'rgb_to_lab', 'lab_to_rgb', 'ab_bins', 'quantize_ab', 'bin_to_ab', 'NUM_AB_BINS',
    'JigsawDataset', 'hamming_permutations', 'shuffle_tiles', 'unshuffle', 'jigsaw_geometry',
    'JIGSAW_GRIDS', 'DEFAULT_NUM_PERMUTATIONS',
]

_logger = logging.getLogger(__name__)

_DATASETS: Dict[str, Callable[..., Dataset]] = {
    'rotation': RotationDataset,
    'colorization': ColorizationDataset,
    'jigsaw': JigsawDataset,
}
PRETEXT_TASKS = tuple(_DATASETS)


def list_pretext_tasks() -> list:
    """Names accepted by :func:`pretext_dataset` and :func:`pretext_task`: rotation, colorization, jigsaw."""
    return list(PRETEXT_TASKS)


def _check_task(task: Any) -> str:
    if task not in _DATASETS:
        raise ValueError(f'unknown pretext task {task!r}; expected one of {list_pretext_tasks()}.')
    return task


def pretext_task(name: str, *, grid: Optional[int] = None, num_permutations: Optional[int] = None) -> PretextTask:
    """Metadata of a pretext task (num_classes, collate_fn, expected head) without building a dataset.

    Parameters
    ----------
    name
        One of :func:`list_pretext_tasks`.
    grid, num_permutations
        Jigsaw only (it needs ``grid``; ``num_permutations`` defaults to 24 / 100 for grid 2 / 3).
    """
    name = _check_task(name)
    if name != 'jigsaw' and (grid is not None or num_permutations is not None):
        raise ValueError(f'grid and num_permutations apply to the jigsaw task only, not to {name!r}; drop them.')
    if name == 'rotation':
        return rotation_task()
    if name == 'colorization':
        return colorization_task()
    return jigsaw_task(grid, num_permutations)


def pretext_dataset(task: str, base: Dataset, **kwargs: Any) -> Dataset:
    """Wrap ``base`` in the label source of a pretext task.

    Parameters
    ----------
    task
        ``'rotation'``, ``'colorization'`` or ``'jigsaw'``.
    base
        Dataset of images (items ``(image, label)`` or bare images); labels are ignored.
    **kwargs
        Passed to the task's dataset: ``seed`` for all; ``mean``, ``std`` for :class:`ColorizationDataset`;
        ``grid``, ``num_permutations``, ``permutation_seed``, ``jitter`` for :class:`JigsawDataset`.

    Returns
    -------
    Dataset
        With ``.task`` (:class:`PretextTask`), ``.num_classes`` and ``.collate_fn``.
    """
    cls = _DATASETS[_check_task(task)]
    try:
        return cls(base, **kwargs)
    except TypeError as exc:
        if 'unexpected keyword argument' not in str(exc):
            raise
        raise TypeError(f'{exc}; the {task!r} task accepts: {_accepted_kwargs(cls)}.') from exc


def _accepted_kwargs(cls: type) -> str:
    names = [p for p in inspect.signature(cls.__init__).parameters if p not in ('self', 'base')]
    return ', '.join(names)
