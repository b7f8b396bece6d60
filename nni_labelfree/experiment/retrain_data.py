"""Labelled images for retraining: train / validation / test splits and the standard CIFAR augmentation.

Images come from :func:`nni_labelfree.data.folder_labels.labeled_image_source`: ``cifar10``/``cifar100`` with their
labels, or ``imagefolder`` labelled by class subfolder, ``<root>/train/<class>/<image>`` and
``<root>/test/<class>/<image>``, classes numbered in sorted folder-name order (the shared CIFAR-10 JPEG archive has
this layout).

Splits: the validation images are ``val_fraction`` of the (optionally subsampled) training split, drawn with
``split_seed``; the model trains on the rest; the test split is the dataset's own.

Augmentation (:class:`BatchAugment`, training batches only) is the CIFAR standard of DARTS and NAS-Bench-201:
random crop with 4 pixels of zero padding (black in pixel space), horizontal flip with probability 1/2, and
optionally cutout (DeVries & Taylor, 2017; DARTS's evaluation: one 16x16 square, its centre uniform over the image,
clipped at the border). It runs on whole batches on the training device, drawing from its own seeded generator.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from nni_labelfree.data import CIFAR10_MEAN, CIFAR10_STD, derive_seed, labeled_image_source
from nni_labelfree.experiment.retrain_config import RetrainConfig

__all__ = ['LabelledSplits', 'labelled_splits', 'BatchAugment']

_logger = logging.getLogger(__name__)


@dataclass
class LabelledSplits:
    """Training, validation (None when ``val_fraction`` is 0) and test images with their class count."""
    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int


def labelled_splits(config: RetrainConfig) -> LabelledSplits:
    """Load the configured dataset's training and test splits with true labels and hold out the validation part.

    Raises ``FileNotFoundError`` when the images are absent and ``ValueError`` when they carry no labels.
    """
    train_pool = _labelled(config, 'train', config.num_images)
    test = _labelled(config, 'test', config.test_images)
    num_classes = int(train_pool.num_true_classes)
    if config.data == 'imagefolder':
        _check_folder_classes(config, train_pool, test)
    train, val = _hold_out(train_pool, config)
    if len(train) < 2:
        raise ValueError(f'Only {len(train)} training image(s) left after holding out the validation images; use '
                         'more num_images or a smaller val_fraction.')
    _logger.info('Retraining data %s: %d train, %d val, %d test images, %d classes', config.data, len(train),
                 len(val) if val is not None else 0, len(test), num_classes)
    return LabelledSplits(train, val, test, num_classes)


def _labelled(config: RetrainConfig, split: str, count: int | None) -> Dataset:
    if config.data == 'imagefolder':
        _require_split_folder(config, split)
    images = labeled_image_source(config.data, root=config.data_root, split=split, download=config.download,
                                  num_images=count, seed=config.split_seed, image_size=config.image_size)
    if not getattr(images, 'num_true_classes', None):
        raise ValueError(f'The {split} images of {config.data_root} carry no labels: retraining needs an image folder '
                         'with one subfolder per class, <root>/train/<class>/<image> and <root>/test/<class>/<image>.')
    return images


def _folder_root(config: RetrainConfig, split: str) -> Path:
    from nni_labelfree.data.sources import _resolve_image_root  # the image source's own archive/split lookup
    return _resolve_image_root(Path(config.data_root).expanduser(), split, None)


def _require_split_folder(config: RetrainConfig, split: str) -> None:
    folder = _folder_root(config, split)
    if folder.name != split:
        raise FileNotFoundError(f'{config.data_root} has no {split}/ subfolder. Retraining on an image folder needs '
                                '<root>/train/<class>/<image> and <root>/test/<class>/<image> (the layout of '
                                'torchvision ImageFolder splits).')


def _class_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.'))


def _check_folder_classes(config: RetrainConfig, train: Dataset, test: Dataset) -> None:
    """Labels are indices into the sorted class names of each split: both must hold the same classes."""
    train_names, test_names = _class_names(_folder_root(config, 'train')), _class_names(_folder_root(config, 'test'))
    if train_names != test_names:
        raise ValueError(f'The train/ and test/ folders of {config.data_root} hold different classes ({train_names} '
                         f'vs {test_names}); labels would not match. Use the same class subfolders in both.')
    for split, images in (('train', train), ('test', test)):
        if images.num_true_classes != len(train_names):
            raise ValueError(f'The {split} images drawn ({len(images)}) cover {images.num_true_classes} of the '
                             f'{len(train_names)} classes, so class numbers would shift. Use more images '
                             '(num_images / test_images) or null for all.')


def _hold_out(images: Dataset, config: RetrainConfig) -> tuple[Dataset, Dataset | None]:
    held = int(round(len(images) * config.val_fraction))
    if held == 0:
        return images, None
    generator = torch.Generator().manual_seed(derive_seed(config.split_seed, 1))
    order = torch.randperm(len(images), generator=generator).tolist()
    return Subset(images, sorted(order[held:])), Subset(images, sorted(order[:held]))


class BatchAugment(nn.Module):
    """Random crop (zero padding), horizontal flip and cutout on a normalised batch ``[N, C, H, W]``.

    Parameters
    ----------
    padding
        Pixels of padding before the random crop back to ``H x W`` (4 for CIFAR; 0: no crop).
    cutout
        Side of the zeroed square (0: none). Zero is the dataset mean after normalisation, as in DARTS.
    seed
        Seed of the generator every random draw comes from.
    mean, std
        The normalisation of the images, so that padding is black in pixel space.
    """

    def __init__(self, padding: int = 4, cutout: int = 0, seed: int = 0,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
        super().__init__()
        if padding < 0 or cutout < 0:
            raise ValueError(f'padding and cutout must be non-negative, got {padding} and {cutout}.')
        self.padding, self.cutout = int(padding), int(cutout)
        self.generator = torch.Generator().manual_seed(derive_seed(seed, 2))
        black = -torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)
        self.register_buffer('black', black.view(1, -1, 1, 1), persistent=False)

    def _randint(self, high: int, n: int, device: torch.device) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=self.generator).to(device)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Pad by ``padding`` with black and cut a random ``H x W`` window per image."""
        n, c, h, w = x.shape
        p = self.padding
        padded = self.black.to(x.dtype).expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = x
        rows = self._randint(2 * p + 1, n, x.device)[:, None] + torch.arange(h, device=x.device)
        cols = self._randint(2 * p + 1, n, x.device)[:, None] + torch.arange(w, device=x.device)
        batch = torch.arange(n, device=x.device)[:, None, None]
        # advanced indices around a slice: the result is [N, H, W, C]
        return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()

    def flip(self, x: torch.Tensor) -> torch.Tensor:
        """Mirror each image left-right with probability 1/2."""
        mirror = (torch.rand(len(x), generator=self.generator) < 0.5).to(x.device)
        return torch.where(mirror[:, None, None, None], x.flip(3), x)

    def cut(self, x: torch.Tensor) -> torch.Tensor:
        """Zero one ``cutout x cutout`` square per image, centred uniformly, clipped at the border."""
        n, _, h, w = x.shape
        half = self.cutout // 2
        cy, cx = self._randint(h, n, x.device), self._randint(w, n, x.device)
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_rows = (ys >= (cy - half).clamp(min=0)[:, None]) & (ys < (cy + half).clamp(max=h)[:, None])
        in_cols = (xs >= (cx - half).clamp(min=0)[:, None]) & (xs < (cx + half).clamp(max=w)[:, None])
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
        return x * keep[:, None].to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding:
            x = self.crop(x)
        x = self.flip(x)
        if self.cutout:
            x = self.cut(x)
        return x
