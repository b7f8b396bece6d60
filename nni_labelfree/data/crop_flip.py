"""CIFAR-style augmentation (pad, random crop, horizontal flip), deterministic per ``(seed, epoch, index)``.

Reference: Chenxi Liu, Piotr Dollár, Kaiming He, Ross Girshick, Alan Yuille, Saining Xie, "Are Labels Necessary
for Neural Architecture Search?", ECCV 2020 (docs/methods.md section 2.1): every pretext task augments each image
once, then applies its pretext transform. UnNAS's ImageNet pipeline takes random-resized crops; at CIFAR scale the
standard augmentation is a random crop of the original size from the image zero-padded by 4 pixels and a flip with
probability 1/2, which is what :class:`CropFlipDataset` does. Photometric augmentation (PCA lighting, jigsaw's
random grayscale) is not part of it.

The crop offsets and the flip of item ``i`` at epoch ``e`` come from a generator seeded by ``(seed, e, i)``, so
an item is the same in any order, batch and worker, and a resumed search sees exactly the crops of an
uninterrupted one.
"""
from __future__ import annotations

import logging
import random
from typing import Any, NamedTuple

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from .epochs import EpochSelectable
from .pretext_base import image_of_item
from .sources import derive_seed

__all__ = ['CropFlipDataset', 'CropFlipParams', 'crop_and_flip']

_logger = logging.getLogger(__name__)

# Mixed into the seeds so the crops never share a stream with a pretext task (jigsaw seeds by (seed, epoch, index)).
_CROP_FLIP_STREAM = 0x4352_4F50
_DEFAULT_PADDING_DIVISOR = 8  # 4 px at 32 px, the CIFAR standard


class CropFlipParams(NamedTuple):
    """One draw of the augmentation: the crop's top-left corner in the padded image and whether to mirror it."""

    top: int
    left: int
    flip: bool


def crop_and_flip(image: torch.Tensor, params: CropFlipParams, padding: int) -> torch.Tensor:
    """The ``H x W`` window at ``(params.top, params.left)`` of ``image`` zero-padded by ``padding`` on every side,
    mirrored left-right when ``params.flip`` is set.

    Parameters
    ----------
    image
        ``[C, H, W]`` tensor.
    params
        Offsets in ``[0, 2 * padding]`` and the flip.
    padding
        Zero padding in pixels (0: no crop, only the flip).
    """
    if not (0 <= params.top <= 2 * padding and 0 <= params.left <= 2 * padding):
        raise ValueError(f'crop offsets must lie in [0, {2 * padding}] for padding {padding}, got top={params.top}, '
                         f'left={params.left}.')
    height, width = image.shape[-2:]
    out = image
    if padding:
        out = F.pad(image, (padding, padding, padding, padding))[..., params.top:params.top + height,
                                                                 params.left:params.left + width]
    return torch.flip(out, dims=(-1,)) if params.flip else out


class CropFlipDataset(EpochSelectable, Dataset):
    """Item ``i`` is item ``i`` of ``base`` with its image randomly cropped (after zero padding) and flipped.

    Wraps any image dataset whose items are ``(image, label, ...)`` or a bare float image ``[C, H, W]``; only the
    image changes, the rest of the item (labels, anything else) passes through untouched. The crop has the
    image's own size and is taken from the image zero-padded by ``padding`` pixels; with ``flip`` the result is
    mirrored left-right with probability 1/2. Images normalised by their mean/std (what
    :func:`~nni_labelfree.data.image_source` yields) are thus padded with the mean colour, as in pycls.

    Reference: Liu et al., "Are Labels Necessary for Neural Architecture Search?", ECCV 2020: each image is augmented
    once before the pretext transform. The paper's ImageNet pipeline uses random-resized crops; this is the
    CIFAR-scale pad-and-crop (see the module docstring).

    The offsets and the flip of item ``i`` come from a generator seeded by ``(seed, epoch, i)``: call
    :meth:`set_epoch` before each epoch for new crops (and leave ``persistent_workers`` off so workers see it).
    Every draw is made whether or not ``flip`` is on, so ``flip=False`` gives the same crops unmirrored.

    Parameters
    ----------
    base
        The image dataset.
    seed
        Non-negative base seed of the crops and flips.
    padding
        Zero padding in pixels on each side, so the crop moves up to ``padding`` pixels each way; None (default):
        ``min(H, W) // 8`` of each image, 4 at 32 px; 0: no crop.
    flip
        Mirror left-right with probability 1/2.
    """

    def __init__(self, base: Dataset, seed: int = 0, *, padding: int | None = None, flip: bool = True) -> None:
        if not hasattr(base, '__getitem__') or not hasattr(base, '__len__'):
            raise TypeError(f'CropFlipDataset wraps a map-style dataset (with __len__ and __getitem__), got a '
                            f'{type(base).__name__}.')
        if len(base) == 0:
            raise ValueError('the base dataset is empty; CropFlipDataset needs at least one image.')
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f'seed must be a non-negative integer, got {seed!r}.')
        derive_seed(seed)  # validates the seed early
        if padding is not None and (isinstance(padding, bool) or not isinstance(padding, int)):
            raise TypeError(f'padding must be a number of pixels (int) or None for min(H, W) // 8, got {padding!r}.')
        if padding is not None and padding < 0:
            raise ValueError(f'padding must be >= 0 pixels (0: no crop), got {padding}.')
        if not isinstance(flip, bool):
            raise TypeError(f'flip must be True or False, got {flip!r}.')
        self.base, self.seed, self.padding, self.flip = base, int(seed), padding, flip
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    @property
    def num_true_classes(self) -> int | None:
        """The base's class count, if it declares one (crops keep labels, so labeled sources stay labeled)."""
        return getattr(self.base, 'num_true_classes', None)

    def padding_for(self, height: int, width: int) -> int:
        """The padding applied to an ``height x width`` image: :attr:`padding`, or ``min(H, W) // 8`` if None."""
        return self.padding if self.padding is not None else min(height, width) // _DEFAULT_PADDING_DIVISOR

    def params(self, index: int, height: int, width: int) -> CropFlipParams:
        """The crop and flip of item ``index`` (an ``height x width`` image) at the current epoch."""
        padding = self.padding_for(height, width)
        rng = random.Random(derive_seed(self.seed, _CROP_FLIP_STREAM, self._epoch, index % len(self)))
        top, left = rng.randint(0, 2 * padding), rng.randint(0, 2 * padding)
        mirrored = rng.random() < 0.5
        return CropFlipParams(top, left, mirrored and self.flip)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f'index {index} out of range for a dataset of {len(self)} images.')
        item = self.base[index]
        image = image_of_item(item, 'crop-and-flip augmentation')
        height, width = image.shape[-2:]
        augmented = crop_and_flip(image, self.params(index, int(height), int(width)),
                                  self.padding_for(int(height), int(width)))
        if isinstance(item, list):
            return [augmented, *item[1:]]
        return (augmented, *item[1:]) if isinstance(item, tuple) else augmented

    def __repr__(self) -> str:
        padding = 'min(H, W) // 8' if self.padding is None else self.padding
        return f'CropFlipDataset({len(self)} images, seed={self.seed}, padding={padding}, flip={self.flip})'
