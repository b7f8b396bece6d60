"""UnrealNAS's unreal search data: random labels on real images (RLRD), on fractals (RLGD) or on noise (RLRN).

Reference: Xiangyu Dong et al., "Can We Search Neural Architectures with Unreal Data?" (UnrealNAS), sections 3.3
and 4.1, appendix 7. Every kind pairs each image with a label drawn uniformly once from ``num_classes`` random
classes (RLNAS's :class:`~nni_labelfree.data.RandomLabelDataset`). The bi-level search's "validation" set is the
same images, horizontally flipped, with the same labels; the training set gets normalisation only.

- ``rlrd``: the given real images (the paper: 25k CIFAR-10 training images), 1000 random classes;
- ``rlgd``: FractalDB-style IFS fractals (:class:`~nni_labelfree.data.FractalImages`), 5000 classes;
- ``rlrn``: N(0, 1) noise fixed per index (:class:`~nni_labelfree.data.GaussianNoiseImages`), 5000 classes.

The class counts are the paper's for 25k images; :func:`default_num_classes` scales them down for fewer.
"""
from __future__ import annotations

import logging
import types
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .fractal import FractalImages, IFSCategory, _check_sizes
from .random_labels import RandomLabelDataset
from .sources import CIFAR10_MEAN, CIFAR10_STD, GaussianNoiseImages, _subset_indices

__all__ = ['UNREAL_KINDS', 'PAPER_NUM_CLASSES', 'PAPER_NUM_IMAGES', 'PAPER_FRACTAL_CATEGORIES',
           'unreal_dataset', 'default_num_classes', 'HorizontalFlipDataset', 'ImageTensorDataset']

_logger = logging.getLogger(__name__)

UNREAL_KINDS: Tuple[str, ...] = ('rlrd', 'rlgd', 'rlrn')
PAPER_NUM_CLASSES: types.MappingProxyType = types.MappingProxyType({'rlrd': 1000, 'rlgd': 5000, 'rlrn': 5000})
PAPER_NUM_IMAGES = 25_000  # the search's training half of 50k (DARTS split), also its "validation" set
PAPER_FRACTAL_CATEGORIES = 100  # FracDB-100
_IMAGES_PER_FRACTAL_CATEGORY = PAPER_NUM_IMAGES // PAPER_FRACTAL_CATEGORIES


class HorizontalFlipDataset(Dataset):
    """``(image flipped left-right, label)`` for every ``(image, label)`` of ``base`` (UnrealNAS's unreal
    validation set: the training images, horizontally flipped, labels unchanged)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Any]:
        image, label = self.base[index]
        return image.flip(-1), label


class ImageTensorDataset(Dataset):
    """Real images as normalised float tensors ``[C, H, W]``, whatever the base yields (for RLRD).

    Items of ``base`` may be an image or ``(image, label, ...)``; the label is passed on (-1 when absent).
    A float tensor is taken as already normalised (the project's image sources normalise); a uint8 tensor
    ``[C, H, W]`` or a PIL image is scaled to [0, 1] and normalised with CIFAR-10's statistics (3 channels) or
    ``(x - 0.5) / 0.5`` (other channel counts).

    Parameters
    ----------
    base
        The real images.
    shape
        Expected ``(C, H, W)``; the first item is checked at construction, every item on access.
    """

    def __init__(self, base: Dataset, shape: Tuple[int, int, int]) -> None:
        if len(base) == 0:
            raise ValueError('the images dataset is empty; RLRD needs real images.')
        self.base, self.shape = base, tuple(shape)
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if shape[0] == 3 else ((0.5,) * shape[0], (0.5,) * shape[0])
        self._mean, self._std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        self[0]  # a wrong type or shape fails here, with the fix

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Any]:
        item = self.base[index]
        image, label = (item[0], item[1] if len(item) > 1 else -1) if isinstance(item, (tuple, list)) else (item, -1)
        return self._as_tensor(image), label

    def _as_tensor(self, image: Any) -> torch.Tensor:
        if not torch.is_tensor(image):
            if not hasattr(image, 'convert'):
                raise TypeError(f'RLRD images must be tensors [C, H, W] or PIL images, got {type(image).__name__}; '
                                'wrap your data so it yields one of those.')
            array = np.array(image.convert('RGB' if self.shape[0] == 3 else 'L'), dtype=np.uint8)
            image = torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)
        if tuple(image.shape) != self.shape:
            raise ValueError(f'an RLRD image has shape {tuple(image.shape)} but (channels, image_size, image_size) '
                             f'is {self.shape}; pass channels={image.shape[0]}, image_size={image.shape[-1]} '
                             'to match the images (square images only).')
        if image.dtype == torch.uint8:
            return (image.float() / 255.0 - self._mean) / self._std
        if not image.is_floating_point():
            raise TypeError(f'RLRD image tensors must be float (normalised) or uint8, got {image.dtype}.')
        return image


def default_num_classes(kind: str, num_images: int) -> int:
    """The paper's class count for ``kind``, scaled down to keep its images per class below 25k images.

    ``round(PAPER_NUM_CLASSES[kind] * num_images / 25000)``, clipped to ``[2, PAPER_NUM_CLASSES[kind]]``: RLRD
    keeps 25 images per class, RLGD and RLRN 5 (the paper notes too few images per class destabilises the search).
    """
    _check_kind(kind)
    paper = PAPER_NUM_CLASSES[kind]
    return int(min(paper, max(2, round(paper * num_images / PAPER_NUM_IMAGES))))


def _check_kind(kind: Any) -> None:
    if kind not in UNREAL_KINDS:
        raise ValueError(f'unknown unreal data kind {kind!r}; expected one of {list(UNREAL_KINDS)} (random labels '
                         'on real images, generated fractals, Gaussian noise).')


def _check_num_classes(num_classes: Any, num_images: int) -> int:
    _check_sizes(num_classes=num_classes)
    if num_classes < 2:
        raise ValueError(f'num_classes must be at least 2, got {num_classes}.')
    if num_classes > num_images:
        raise ValueError(f'num_classes={num_classes} is larger than the number of images ({num_images}), so some '
                         f'classes could never be seen; pass num_classes <= {num_images} (or None for the paper\'s '
                         'count scaled to the data) or use more images.')
    return int(num_classes)


def _real_images(images: Optional[Dataset], num_images: Optional[int], shape: Tuple[int, int, int],
                 seed: int) -> Dataset:
    if images is None:
        raise ValueError("kind='rlrd' randomly labels real images, but images=None; pass images=<a Dataset of "
                         "images or (image, label) pairs>, or use kind='rlgd' or 'rlrn', which need no data.")
    if num_images is not None:
        images = Subset(images, _subset_indices(len(images), num_images, seed).tolist())
    return ImageTensorDataset(images, shape)


def _generated_images(kind: str, images: Optional[Dataset], num_images: Optional[int],
                      shape: Tuple[int, int, int], seed: int, categories: Optional[Sequence[IFSCategory]]) -> Dataset:
    if images is not None:
        _logger.warning('kind=%r generates its own images; the images passed are not used', kind)
    count = PAPER_NUM_IMAGES if num_images is None else num_images
    if kind == 'rlrn':
        return GaussianNoiseImages(count, shape, seed)
    num_categories = min(PAPER_FRACTAL_CATEGORIES, max(1, count // _IMAGES_PER_FRACTAL_CATEGORY))
    return FractalImages(num_categories, num_images=count, image_size=shape[-1], channels=shape[0], seed=seed,
                         categories=categories)


def unreal_dataset(kind: str, *, images: Optional[Dataset] = None, num_images: Optional[int] = None,
                   image_size: int = 32, channels: int = 3, num_classes: Optional[int] = None, seed: int = 0,
                   categories: Optional[Sequence[IFSCategory]] = None) -> Tuple[Dataset, Dataset]:
    """UnrealNAS's ``(train, val)`` datasets of one unreal kind, items ``(normalised image [C, H, W], label)``.

    ``val[i]`` is ``train[i]``'s image flipped left-right with the same label (the paper's unreal validation
    set); labels are drawn uniformly once from ``num_classes`` classes, seeded, fixed per index.

    Parameters
    ----------
    kind
        ``'rlrd'`` (random labels on ``images``), ``'rlgd'`` (on fractals), ``'rlrn'`` (on N(0, 1) noise).
    images
        RLRD only: a Dataset yielding images or ``(image, label)`` pairs (labels ignored), as float tensors (taken
        as normalised), uint8 tensors or PIL images (normalised here).
    num_images
        RLRD: a seeded random subset of that many images (None: all). RLGD, RLRN: the number of images
        (None: the paper's 25,000).
    image_size, channels
        Image shape ``(channels, image_size, image_size)``; RLRD images must already have it.
    num_classes
        Random classes, at least 2 and at most the number of images. None: :func:`default_num_classes` (the
        paper's 1000 / 5000 / 5000 at 25k images, scaled down for fewer).
    seed
        Seeds the labels, the RLRD subset, the noise and the fractals.
    categories
        RLGD only: fractal categories to render (e.g. :func:`load_categories`) instead of searching
        ``min(100, num_images // 250)`` (at least 1) of them, FracDB-100's 250 training images per category.

    Raises
    ------
    ValueError
        Unknown ``kind``, RLRD without images, non-positive sizes, ``num_classes`` outside ``[2, num_images]``,
        RLRD images whose shape is not ``(channels, image_size, image_size)``.
    """
    _check_kind(kind)
    _check_sizes(image_size=image_size, channels=channels, num_images=1 if num_images is None else num_images)
    if categories is not None and kind != 'rlgd':
        raise ValueError(f"categories are fractal categories, used by kind='rlgd' only, but kind={kind!r}; drop "
                         "categories or use kind='rlgd'.")
    shape = (channels, image_size, image_size)
    if kind == 'rlrd':
        base = _real_images(images, num_images, shape, seed)
    else:
        base = _generated_images(kind, images, num_images, shape, seed, categories)
    classes = default_num_classes(kind, len(base)) if num_classes is None else num_classes
    train = RandomLabelDataset(base, _check_num_classes(classes, len(base)), 'uniform_once', seed)
    _logger.info('Unreal data %s: %d images %s, %d random classes', kind, len(base), shape, train.num_classes)
    return train, HorizontalFlipDataset(train)
