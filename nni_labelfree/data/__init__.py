"""Image sources and label sources for label-free NAS.

Image sources (:func:`image_source`) yield ``(image, true label or -1)``; label sources such as
:class:`RandomLabelDataset` wrap any image dataset and yield ``(image, target)``.
"""
import logging

from .random_labels import RANDOM_LABEL_MODES, RandomLabelDataset, random_label_dataset
from .sources import (CIFAR10_MEAN, CIFAR10_STD, IMAGE_EXTENSIONS, GaussianNoiseImages, ImageFileDataset,
                      TensorImageDataset, derive_seed, extract_archive, find_image_files, image_source,
                      list_image_sources)

__all__ = [
    'CIFAR10_MEAN', 'CIFAR10_STD', 'IMAGE_EXTENSIONS', 'RANDOM_LABEL_MODES',
    'image_source', 'list_image_sources', 'derive_seed', 'extract_archive', 'find_image_files',
    'TensorImageDataset', 'ImageFileDataset', 'GaussianNoiseImages',
    'RandomLabelDataset', 'random_label_dataset',
]

_logger = logging.getLogger(__name__)
