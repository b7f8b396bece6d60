"""FractalDB-style fractal images (UnrealNAS's RLGD data): the :class:`FractalImages` dataset and category files.

References: Hirokatsu Kataoka et al., "Pre-training without Natural Images" (FractalDB), ACCV 2020; Xiangyu Dong
et al., "Can We Search Neural Architectures with Unreal Data?" (UnrealNAS), section 3.3.

The generator itself (category search by filling rate, vectorised chaos game, 3x3 patch rendering, weights and
flips) is :mod:`nni_labelfree.data.fractal_ifs`; its public names are re-exported here. A dataset is defined by
its categories (their IFS parameters, storable as JSON or ``.npz``), the seed and the render settings: the same
three regenerate it exactly.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .fractal_ifs import (MAX_MAPS, CategorySearchResult, IFSCategory, RenderSettings, SearchSettings,
                          draw_candidate, filling_rates, fractal_weight_table, ifs_probabilities, render_fractals,
                          search_categories, seeded_generator)

__all__ = [
    'FRACTAL_MEAN', 'FRACTAL_STD', 'MAX_MAPS', 'IFSCategory', 'SearchSettings', 'RenderSettings',
    'CategorySearchResult', 'seeded_generator', 'draw_candidate', 'ifs_probabilities', 'fractal_weight_table',
    'filling_rates', 'search_categories', 'render_fractals', 'categories_to_dict', 'categories_from_dict',
    'save_categories', 'load_categories', 'FractalImages',
]

_logger = logging.getLogger(__name__)

# Pixel statistics of ``image / 255`` at the default settings, 32 px (measured over 2,000 images of 20 searched
# categories, seed 0: mean 0.380, std 0.447); gray images, so the three channels share them.
FRACTAL_MEAN: Tuple[float, float, float] = (0.38, 0.38, 0.38)
FRACTAL_STD: Tuple[float, float, float] = (0.45, 0.45, 0.45)


def categories_to_dict(categories: Sequence[IFSCategory]) -> dict:
    """A JSON-able dict of the categories (float64 values survive a JSON round trip exactly)."""
    return {'format': 'nni_labelfree.fractal_categories/1',
            'categories': [{'maps': c.maps.tolist(), 'probabilities': c.probabilities.tolist(),
                            'filling_rate': c.filling_rate, 'candidate': c.candidate} for c in categories]}


def categories_from_dict(data: dict) -> List[IFSCategory]:
    """Inverse of :func:`categories_to_dict`."""
    if not isinstance(data, dict) or 'categories' not in data:
        raise ValueError("expected a dict with a 'categories' list, as written by categories_to_dict.")
    return [IFSCategory(np.asarray(c['maps'], np.float64), np.asarray(c['probabilities'], np.float64),
                        float(c['filling_rate']), int(c['candidate'])) for c in data['categories']]


def save_categories(categories: Sequence[IFSCategory], path: Union[str, Path]) -> Path:
    """Write categories to ``.json`` or ``.npz`` (chosen by the suffix)."""
    path = Path(path)
    if path.suffix == '.json':
        path.write_text(json.dumps(categories_to_dict(categories)))
    elif path.suffix == '.npz':
        counts = np.array([len(c.maps) for c in categories])
        np.savez(path, counts=counts, maps=np.concatenate([c.maps for c in categories]),
                 probabilities=np.concatenate([c.probabilities for c in categories]),
                 filling_rates=np.array([c.filling_rate for c in categories]),
                 candidates=np.array([c.candidate for c in categories]))
    else:
        raise ValueError(f'unsupported category file {path}; use a .json or .npz suffix.')
    return path


def load_categories(path: Union[str, Path]) -> List[IFSCategory]:
    """Read categories written by :func:`save_categories`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'category file {path} does not exist; write one with save_categories.')
    if path.suffix == '.json':
        return categories_from_dict(json.loads(path.read_text()))
    if path.suffix != '.npz':
        raise ValueError(f'unsupported category file {path}; use a .json or .npz suffix.')
    with np.load(path) as data:
        bounds = np.cumsum(np.concatenate([[0], data['counts']]))
        return [IFSCategory(data['maps'][lo:hi].copy(), data['probabilities'][lo:hi].copy(), float(rate),
                            int(candidate))
                for lo, hi, rate, candidate in zip(bounds[:-1], bounds[1:], data['filling_rates'],
                                                   data['candidates'])]


def _check_sizes(**sizes: int) -> None:
    """TypeError for a non-integer size, ValueError for one below 1."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f'{name} must be an integer, got {value!r} ({type(value).__name__}).')
        if value < 1:
            raise ValueError(f'{name} must be a positive integer, got {value}.')


class FractalImages(Dataset):
    """Fractal images ``(image [C, H, W] normalised float, category)``, rendered up-front at construction.

    Generated up-front, in batches, because the chaos game is only fast when it advances many images together
    (one image at a time costs the per-step Python overhead for every image; 25k 32x32 images take seconds
    batched). The images are held as one gray uint8 tensor ``[N, H, W]`` (1 byte per pixel; :attr:`images` is
    a ``[N, C, H, W]`` view) and normalised on access. Index ``i`` is instance ``i // num_categories`` of
    category ``i % num_categories`` (round-robin, so any ``num_images`` is balanced), and its pixels depend only
    on that pair, the categories, the seed and the settings: a smaller dataset is a prefix of a larger one.

    Parameters
    ----------
    num_categories
        Number of IFS categories to search (FractalDB filling-rate search) when ``categories`` is not given.
    images_per_category
        Instances per category; the length is ``num_categories * images_per_category``. Give this or
        ``num_images``.
    num_images
        Total number of images, spread round-robin over the categories.
    image_size, channels
        Output side in pixels and number of (identical, gray) channels.
    seed
        Seeds the category search (domain 0) and the rendering (domain 1).
    categories
        Categories to render, e.g. from :func:`load_categories`, instead of searching; ``num_categories`` is
        then ignored.
    search, render
        :class:`SearchSettings` and :class:`RenderSettings`.
    mean, std
        Per-channel normalisation of ``image / 255``; by default :data:`FRACTAL_MEAN`, :data:`FRACTAL_STD`.

    :meth:`to_dict` records everything that defines the images; ``FractalImages.from_dict`` regenerates them.
    """

    def __init__(self, num_categories: int = 100, images_per_category: Optional[int] = None, *,
                 num_images: Optional[int] = None, image_size: int = 32, channels: int = 3, seed: int = 0,
                 categories: Optional[Sequence[IFSCategory]] = None, search: SearchSettings = SearchSettings(),
                 render: RenderSettings = RenderSettings(), mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None) -> None:
        if (images_per_category is None) == (num_images is None):
            raise ValueError('give exactly one of images_per_category and num_images, e.g. '
                             'FractalImages(100, images_per_category=250) or FractalImages(100, num_images=25000).')
        _check_sizes(image_size=image_size, channels=channels, num_categories=num_categories,
                     **{name: value for name, value in (('images_per_category', images_per_category),
                                                        ('num_images', num_images)) if value is not None})
        mean = (FRACTAL_MEAN[0],) * channels if mean is None else tuple(mean)
        std = (FRACTAL_STD[0],) * channels if std is None else tuple(std)
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(f'mean and std need one value per channel ({channels}) and std > 0, got mean={mean}, '
                             f'std={std}.')
        if categories is None:
            categories = search_categories(num_categories, seed, search).accepted
        if not categories:
            raise ValueError('categories is empty; pass at least one IFSCategory or leave it None to search.')
        self.categories, self.seed, self.render_settings = list(categories), int(seed), render
        total = len(self.categories) * images_per_category if num_images is None else num_images
        indices = np.arange(total)
        self._category_ids = indices % len(self.categories)
        start = time.perf_counter()
        gray = render_fractals(self.categories, self._category_ids, indices // len(self.categories), image_size,
                               self.seed, render)
        _logger.info('Rendered %d fractal images in %.1f s', total, time.perf_counter() - start)
        self._gray = torch.from_numpy(gray)
        self.channels, self.mean, self.std = int(channels), mean, std
        self._mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def to_dict(self) -> dict:
        """A JSON-able description that regenerates this dataset exactly (:meth:`from_dict`)."""
        return {**categories_to_dict(self.categories), 'num_images': len(self), 'image_size': self._gray.shape[-1],
                'channels': self.channels, 'seed': self.seed, 'render': dataclasses.asdict(self.render_settings),
                'mean': list(self.mean), 'std': list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> 'FractalImages':
        """Rebuild the dataset described by :meth:`to_dict` (the same pixels, no category search)."""
        return cls(categories=categories_from_dict(data), num_images=data['num_images'],
                   image_size=data['image_size'], channels=data['channels'], seed=data['seed'],
                   render=RenderSettings(**data['render']), mean=data['mean'], std=data['std'])

    num_true_classes = property(lambda self: len(self.categories), doc='Number of fractal categories.')

    @property
    def targets(self) -> list:
        """Category of every image (the fractal class, which UnrealNAS replaces by random labels)."""
        return self._category_ids.tolist()

    @property
    def images(self) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` (a view: the channels share one gray plane)."""
        return self._gray.unsqueeze(1).expand(-1, self.channels, -1, -1)

    def __len__(self) -> int:
        return len(self._gray)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = self._gray[index].float().div_(255.0).expand(self.channels, -1, -1)
        return (image - self._mean) / self._std, int(self._category_ids[index])
