"""Shared pieces of the UnNAS pretext label sources: the task metadata record and image checks.

Reference: Chenxi Liu, Piotr Dollár, Kaiming He, Ross Girshick, Alan Yuille, Saining Xie, "Are Labels Necessary
for Neural Architecture Search?", ECCV 2020. See :mod:`nni_labelfree.data.pretext` for the tasks themselves.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Optional

import torch

__all__ = ['PretextTask', 'image_of_item']

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PretextTask:
    """What a strategy needs to know about a pretext task to build its head, loss and loader.

    Attributes
    ----------
    name
        ``'rotation'``, ``'colorization'`` or ``'jigsaw'``.
    num_classes
        Width of the head's output: 4 (rotations), 313 (ab bins, per pixel) or K (permutations).
    collate_fn
        The ``DataLoader`` collate function to use (:func:`rotation_collate` for rotation, the default collate
        otherwise).
    input_channels
        Channels of the network input: 1 for colorization (the L channel), None when it is the images' own.
    per_pixel
        True when the target is one class per pixel (``[H, W]``) and the loss is a pixel-wise cross-entropy.
    inputs_per_image
        Network inputs made from one image: 4 rotated copies, 1 L image, or G*G tiles (siamese trunk).
    head
        One-line description of the expected head (the paper's).
    """

    name: str
    num_classes: int
    collate_fn: Callable[[list], Any]
    input_channels: Optional[int]
    per_pixel: bool
    inputs_per_image: int
    head: str


def image_of_item(item: Any, task: str) -> torch.Tensor:
    """The image of a base-dataset item (``(image, label, ...)`` or a bare image), checked to be ``[C, H, W]``.

    Parameters
    ----------
    item
        What ``base[index]`` returned.
    task
        Task name, used in error messages only.

    Raises
    ------
    TypeError
        When the image is not a floating-point tensor.
    ValueError
        When the image is not 3-D ``[C, H, W]``.
    """
    image = item[0] if isinstance(item, (tuple, list)) else item
    if not torch.is_tensor(image) or not image.is_floating_point():
        kind = type(image).__name__ if not torch.is_tensor(image) else f'{image.dtype} tensor'
        raise TypeError(f'{task} needs float image tensors [C, H, W] from the base dataset, got a {kind}. Use an '
                        'image source from nni_labelfree.data.image_source, or add torchvision.transforms.ToTensor() '
                        '(and Normalize) to the base dataset.')
    if image.dim() != 3:
        raise ValueError(f'{task} needs spatial images [C, H, W] from the base dataset, got shape '
                         f'{tuple(image.shape)}. Pass a dataset of images, not of feature vectors or batches.')
    return image
