"""Rotation pretext task (UnNAS): every image at 0, 90, 180 and 270 degrees, a 4-way classification.

Reference: Chenxi Liu et al., "Are Labels Necessary for Neural Architecture Search?", ECCV 2020 (task from
Gidaris et al., "Unsupervised Representation Learning by Predicting Image Rotations", ICLR 2018). As in UnNAS, all
four rotations of every image are used (none is sampled), and the batch size counts images: the collate function
turns ``B`` items into ``4B`` network inputs.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from .pretext_base import PretextTask, image_of_item
from .sources import derive_seed

__all__ = ['NUM_ROTATIONS', 'RotationDataset', 'rotate_image', 'rotation_collate', 'rotation_task']

_logger = logging.getLogger(__name__)

NUM_ROTATIONS = 4


def rotate_image(image: torch.Tensor, quarter_turns: int) -> torch.Tensor:
    """Rotate ``[C, H, W]`` counter-clockwise by ``quarter_turns * 90`` degrees (``np.rot90(im, k, axes=(1, 2))``)."""
    return torch.rot90(image, int(quarter_turns), dims=(1, 2))


def rotation_collate(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Collate rotation items into one flat batch: ``[B, 4, C, H, W]`` -> ``[4B, C, H, W]``, labels -> ``[4B]``.

    The order is image-major (image 0 at 0/90/180/270 degrees, then image 1, ...), as UnNAS's reshape gives.

    Raises
    ------
    ValueError
        When an item is not ``(images [4, C, H, W], labels [4])``, e.g. the items of another dataset.
    """
    if len(batch) == 0:
        raise ValueError('rotation_collate got an empty batch; the DataLoader should never produce one.')
    for item in batch:
        if (not isinstance(item, (tuple, list)) or len(item) != 2 or not torch.is_tensor(item[0])
                or item[0].dim() != 4 or item[0].shape[0] != NUM_ROTATIONS or not torch.is_tensor(item[1])
                or tuple(item[1].shape) != (NUM_ROTATIONS,)):
            raise ValueError('rotation_collate expects items (images [4, C, H, W], labels [4]) from RotationDataset, '
                             f'got {_describe(item)}. Use it only as the collate_fn of a RotationDataset loader.')
    images = torch.stack([item[0] for item in batch]).flatten(0, 1)
    labels = torch.stack([item[1] for item in batch]).flatten()
    return images, labels


def _describe(item: Any) -> str:
    if isinstance(item, (tuple, list)):
        return '(' + ', '.join(_describe(part) for part in item) + ')'
    if torch.is_tensor(item):
        return f'tensor{list(item.shape)}'
    return type(item).__name__


def rotation_task() -> PretextTask:
    """Metadata of the rotation task: 4 classes, :func:`rotation_collate`, 4 inputs per image."""
    return PretextTask(name='rotation', num_classes=NUM_ROTATIONS, collate_fn=rotation_collate,
                       input_channels=None, per_pixel=False, inputs_per_image=NUM_ROTATIONS,
                       head='global average pooling of the features, then Linear(C, 4)')


class RotationDataset(Dataset):
    """Each image of ``base`` at 0, 90, 180 and 270 degrees counter-clockwise, labelled 0, 1, 2, 3.

    Item ``i`` is ``(images [4, C, H, W], labels tensor([0, 1, 2, 3]))`` where ``images[k]`` is the image rotated
    by ``k * 90`` degrees counter-clockwise (``torch.rot90`` on dims (1, 2), equal to UnNAS's
    ``np.rot90(im, k, axes=(1, 2))``). Use :func:`rotation_collate` (``dataset.collate_fn``) in the loader.

    Reference: Liu et al., "Are Labels Necessary for Neural Architecture Search?", ECCV 2020.

    Parameters
    ----------
    base
        Dataset of square float images ``[C, H, W]``, items ``(image, label)`` or a bare image; labels are ignored.
    seed
        Kept for a uniform interface with the other pretext tasks; rotation makes no random choice.

    Raises
    ------
    ValueError
        When the base is empty or its images are not square (a quarter turn would change their shape).
    """

    task: PretextTask = rotation_task()
    num_classes: int = NUM_ROTATIONS
    collate_fn = staticmethod(rotation_collate)

    def __init__(self, base: Dataset, seed: int = 0) -> None:
        derive_seed(seed)  # validates the seed early
        if len(base) == 0:
            raise ValueError('the base dataset is empty; the rotation task needs at least one image.')
        self.base, self.seed = base, int(seed)
        self._check_square(image_of_item(base[0], 'rotation'))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image = self._check_square(image_of_item(self.base[index], 'rotation'))
        images = torch.stack([rotate_image(image, k) for k in range(NUM_ROTATIONS)])
        return images, torch.arange(NUM_ROTATIONS, dtype=torch.int64)

    @staticmethod
    def _check_square(image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if height != width:
            raise ValueError(f'the rotation task needs square images, got {height}x{width}: a 90-degree turn would '
                             'change the shape and the batch could not be stacked. Resize or crop to a square '
                             '(e.g. image_source(..., image_size=32)).')
        return image
