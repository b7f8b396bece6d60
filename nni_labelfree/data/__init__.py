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

# UnNAS pretext tasks (rotation, colorization, jigsaw) as label sources.
from .pretext import (DEFAULT_NUM_PERMUTATIONS, JIGSAW_GRIDS, NUM_AB_BINS, NUM_ROTATIONS,  # noqa: E402
                      PRETEXT_TASKS, ColorizationDataset, JigsawDataset, PretextTask, RotationDataset, ab_bins,
                      bin_to_ab, hamming_permutations, jigsaw_geometry, lab_to_rgb, list_pretext_tasks,
                      pretext_dataset, pretext_task, quantize_ab, rgb_to_lab, rotate_image, rotation_collate,
                      shuffle_tiles, unshuffle)

__all__ += [
    'PRETEXT_TASKS', 'PretextTask', 'pretext_task', 'pretext_dataset', 'list_pretext_tasks',
    'RotationDataset', 'rotation_collate', 'rotate_image', 'NUM_ROTATIONS',
    'ColorizationDataset', 'rgb_to_lab', 'lab_to_rgb', 'ab_bins', 'quantize_ab', 'bin_to_ab', 'NUM_AB_BINS',
    'JigsawDataset', 'hamming_permutations', 'shuffle_tiles', 'unshuffle', 'jigsaw_geometry',
    'JIGSAW_GRIDS', 'DEFAULT_NUM_PERMUTATIONS',
]
from .true_labels import TrueLabelDataset  # noqa: E402

__all__ = [*__all__, 'TrueLabelDataset']
from .samplers import EpochShuffleSampler  # noqa: E402

__all__ = [*__all__, 'EpochShuffleSampler']

# UnrealNAS's unreal data (fractals, RLRD/RLGD/RLRN with flipped validation sets).
from .fractal import (FRACTAL_MEAN, FRACTAL_STD, FractalImages, IFSCategory, load_categories,  # noqa: E402
                      render_fractals, save_categories, search_categories)
from .unreal import (PAPER_NUM_CLASSES, UNREAL_KINDS, HorizontalFlipDataset, default_num_classes,  # noqa: E402
                     unreal_dataset)

__all__ += ['FRACTAL_MEAN', 'FRACTAL_STD', 'FractalImages', 'IFSCategory', 'load_categories', 'render_fractals',
            'save_categories', 'search_categories', 'PAPER_NUM_CLASSES', 'UNREAL_KINDS', 'HorizontalFlipDataset',
            'default_num_classes', 'unreal_dataset']
# Pi-NAS's augmented views (two or four per image, seeded per image and epoch).
from .views import ViewConfig, ViewDataset, ViewParams, augment_views, sample_view_params  # noqa: E402

__all__ += ['ViewConfig', 'ViewDataset', 'ViewParams', 'augment_views', 'sample_view_params']
from .folder_labels import labeled_image_source, with_folder_labels  # noqa: E402

__all__ += ['labeled_image_source', 'with_folder_labels']
# UnNAS's per-image augmentation before the pretext transform (pad, random crop, flip; seeded per image and epoch).
from .crop_flip import CropFlipDataset, CropFlipParams, crop_and_flip  # noqa: E402

__all__ += ['CropFlipDataset', 'CropFlipParams', 'crop_and_flip']
# Pi-NAS's held-out selection images (a seeded split).
from .held_out import DatasetPart, split_held_out, spread_indices  # noqa: E402

__all__ += ['DatasetPart', 'split_held_out', 'spread_indices']
