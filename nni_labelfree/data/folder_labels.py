"""True labels for an image folder laid out by class (``<root>/<class>/<image>``, torchvision's ImageFolder layout).

The ``imagefolder`` image source never reads labels (label -1: a search must not depend on them). The few places
that do need them (SGAS with true labels, the supervised control of UnNAS's correlation study, Pi-NAS's linear
evaluation, retraining) ask :func:`labeled_image_source`, which takes them from the class subfolder names.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .sources import TensorImageDataset, _resolve_image_root, _subset_indices, find_image_files, image_source

__all__ = ['labeled_image_source', 'with_folder_labels']

_logger = logging.getLogger(__name__)


def labeled_image_source(name: str, **kwargs: Any) -> Dataset:
    """:func:`~nni_labelfree.data.image_source` with true labels where they exist.

    For ``imagefolder`` the labels are the indices of the sorted class subfolder names (images directly under the
    root keep -1); a folder without at least two class subfolders stays unlabeled (``num_true_classes`` absent), and
    callers that need labels say so. Other sources already carry their labels (noise: -1).
    """
    images = image_source(name, **kwargs)
    if name != 'imagefolder':
        return images
    return with_folder_labels(images, Path(kwargs['root']).expanduser(), kwargs.get('split', 'train'),
                              kwargs.get('num_images'), kwargs.get('seed', 0))


def with_folder_labels(images: Dataset, root: Path, split: str, num_images: int | None, seed: int) -> Dataset:
    """``images`` (an ``imagefolder`` source built from ``root``/``split``/``num_images``/``seed``) relabelled by
    class subfolder, in the source's own file order."""
    folder = _resolve_image_root(root, split, None)
    paths = find_image_files(folder)
    paths = [paths[i] for i in _subset_indices(len(paths), num_images, seed).tolist()]
    classes = sorted({p.relative_to(folder).parts[0] for p in paths if len(p.relative_to(folder).parts) > 1})
    if len(classes) < 2 or not hasattr(images, 'images'):
        return images
    index = {name: i for i, name in enumerate(classes)}
    labels = torch.tensor([index.get(p.relative_to(folder).parts[0], -1) for p in paths])
    return TensorImageDataset(images.images, labels, num_true_classes=len(classes))
