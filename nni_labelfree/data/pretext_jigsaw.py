"""Jigsaw pretext task (UnNAS): shuffle a grid of jittered tiles and predict which permutation was applied.

Reference: Chenxi Liu et al., "Are Labels Necessary for Neural Architecture Search?", ECCV 2020 (``prepare_jig``),
after Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles", ECCV 2016,
whose permutation sets are chosen greedily to maximise the minimum Hamming distance.

Geometry, as in UnNAS: ``patch = size // grid``, ``tile = int(0.76 * patch)``; tile k (row-major over the grid) is
cropped at a random offset inside its patch (the gap keeps the network from matching edges) and normalised by its
own mean and std over all channels. Grid 2 uses all 24 permutations (UnNAS on CIFAR), grid 3 a max-Hamming set.

Slot convention: with permutation ``perm = permutations[y]``, **tile k goes to slot perm[k]**, i.e.
``output[perm[k]] = tile_k`` (:func:`shuffle_tiles`); :func:`unshuffle` undoes it (``tile_k = output[perm[k]]``).
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .epochs import EpochSelectable
from .pretext_base import PretextTask, image_of_item
from .sources import derive_seed

__all__ = ['JIGSAW_GRIDS', 'DEFAULT_NUM_PERMUTATIONS', 'SMALL_IMAGE_SIZE', 'TILE_FRACTION', 'MIN_TILE_SIZE',
           'JigsawDataset', 'hamming_permutations', 'jigsaw_geometry', 'jigsaw_task', 'shuffle_tiles', 'unshuffle']

_logger = logging.getLogger(__name__)

JIGSAW_GRIDS: Tuple[int, ...] = (2, 3)
DEFAULT_NUM_PERMUTATIONS = {2: 24, 3: 100}  # grid 3: 100 keeps CPU runs small; the paper uses 1000
SMALL_IMAGE_SIZE = 64  # images with a side below this get grid 2 when the grid is chosen automatically
TILE_FRACTION = 0.76
MIN_TILE_SIZE = 4
_STD_FLOOR = 1e-6  # a flat tile normalises to zeros instead of NaN


@functools.lru_cache(maxsize=None)
def _all_permutations(n_tiles: int) -> np.ndarray:
    """All ``n_tiles!`` permutations in lexicographic order, int8, read-only."""
    permutations = np.array(list(itertools.permutations(range(n_tiles))), dtype=np.int8)
    permutations.setflags(write=False)
    return permutations


def _check_permutation_count(n_tiles: int, k: int) -> None:
    if n_tiles not in (4, 9):
        raise ValueError(f'jigsaw supports 2x2 or 3x3 grids (4 or 9 tiles), got {n_tiles} tiles; enumerating all '
                         'permutations of more tiles is infeasible. Pass grid=2 or grid=3.')
    total = math.factorial(n_tiles)
    if not 2 <= k <= total:
        raise ValueError(f'num_permutations={k} but {n_tiles} tiles have only {total} permutations (and at least 2 '
                         f'are needed for a classification task); pass num_permutations between 2 and {total}.')


@functools.lru_cache(maxsize=8)
def _greedy_hamming_set(n_tiles: int, k: int, seed: int) -> np.ndarray:
    permutations = _all_permutations(n_tiles)
    # places[i, v] marks the permutations with value v at position i, so the number of positions a permutation p
    # shares with every permutation is a sum of n_tiles rows: much faster than comparing [n!, n_tiles] arrays.
    places = np.stack([permutations == v for v in range(n_tiles)], axis=1).T.astype(np.uint8).copy()
    positions = np.arange(n_tiles)

    def distances(index: int) -> np.ndarray:
        return n_tiles - places[positions, permutations[index]].sum(axis=0, dtype=np.uint8)

    rng = np.random.default_rng(derive_seed(seed))
    chosen = [int(rng.integers(len(permutations)))]
    min_distance = distances(chosen[0])
    for _ in range(k - 1):
        candidates = np.flatnonzero(min_distance == min_distance.max())  # ties broken by the seeded generator
        chosen.append(int(candidates[rng.integers(len(candidates))]))
        np.minimum(min_distance, distances(chosen[-1]), out=min_distance)
    result = permutations[chosen].astype(np.int64)
    result.setflags(write=False)
    return result


def hamming_permutations(n_tiles: int, k: int, seed: int = 0) -> np.ndarray:
    """A set of ``k`` permutations of ``n_tiles`` tiles with a large minimum pairwise Hamming distance.

    Greedy (Noroozi & Favaro, ECCV 2016): start from a random permutation, then repeatedly add the permutation
    whose minimum Hamming distance to the chosen ones is largest, breaking ties at random. Every random choice
    comes from ``seed``, so the set (and its order, which defines the class indices) is reproducible. For 9 tiles
    the minimum distance is 6 for k = 100 (a random set of 100 has 2 or 3) and 5 for k = 1000 (mean 8.0); either
    takes under a second. Results are cached per ``(n_tiles, k, seed)``.

    Parameters
    ----------
    n_tiles
        4 (2x2 grid) or 9 (3x3 grid); all ``n_tiles!`` permutations are enumerated.
    k
        Number of permutations, between 2 and ``n_tiles!``.
    seed
        Seed of the first permutation and of the tie-breaking.

    Returns
    -------
    np.ndarray
        int64 ``[k, n_tiles]``, unique rows, each a permutation of ``range(n_tiles)``.
    """
    _check_permutation_count(n_tiles, k)
    return _greedy_hamming_set(int(n_tiles), int(k), int(seed)).copy()


def _check_perm(perm: torch.Tensor, n_tiles: int) -> torch.Tensor:
    perm = torch.as_tensor(perm, dtype=torch.int64)
    expected = torch.arange(n_tiles).expand(perm.shape)
    if perm.shape[-1] != n_tiles or not torch.equal(perm.sort(dim=-1).values, expected):
        raise ValueError(f'perm must be a permutation of range({n_tiles}) per row, got {perm.tolist()}.')
    return perm


def shuffle_tiles(tiles: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Put tile k into slot ``perm[k]``: ``out[perm[k]] = tiles[k]``.

    ``tiles`` is ``[N, ...]`` with ``perm`` ``[N]``, or a batch ``[B, N, ...]`` with ``perm`` ``[B, N]``.
    """
    batched = tiles.dim() > 1 and torch.as_tensor(perm).dim() == 2
    perm = _check_perm(perm, tiles.shape[1] if batched else tiles.shape[0])
    out = torch.empty_like(tiles)
    if batched:
        out[torch.arange(len(tiles)).unsqueeze(1), perm] = tiles
    else:
        out[perm] = tiles
    return out


def unshuffle(tiles: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Undo :func:`shuffle_tiles`: tile k is read back from slot ``perm[k]`` (``out[k] = tiles[perm[k]]``)."""
    batched = tiles.dim() > 1 and torch.as_tensor(perm).dim() == 2
    perm = _check_perm(perm, tiles.shape[1] if batched else tiles.shape[0])
    if batched:
        return tiles[torch.arange(len(tiles)).unsqueeze(1), perm]
    return tiles[perm]


def jigsaw_geometry(height: int, width: int, grid: int) -> Tuple[int, int, int]:
    """``(patch_height, patch_width, tile)`` for an image, with ``tile = int(0.76 * min(patch))``.

    Raises
    ------
    ValueError
        When the tile would be smaller than :data:`MIN_TILE_SIZE` pixels.
    """
    patch_h, patch_w = height // grid, width // grid
    tile = int(TILE_FRACTION * min(patch_h, patch_w))
    if tile < MIN_TILE_SIZE:
        min_side = next(s for s in range(grid, 10 ** 6) if int(TILE_FRACTION * (s // grid)) >= MIN_TILE_SIZE)
        smaller = ' or use grid=2' if grid > 2 else ''
        raise ValueError(f'images of {height}x{width} px are too small for a {grid}x{grid} jigsaw: tiles would be '
                         f'{tile} px (need >= {MIN_TILE_SIZE}). Resize the images to at least {min_side} px per side '
                         f'(e.g. image_source(..., image_size={max(min_side, 32)})){smaller}.')
    return patch_h, patch_w, tile


def jigsaw_task(grid: Optional[int] = None, num_permutations: Optional[int] = None) -> PretextTask:
    """Metadata of the jigsaw task on a ``grid`` x ``grid`` puzzle; ``num_classes`` is the number of permutations K.

    K is ``num_permutations`` when given, else the grid's default (24 for 2, 100 for 3). The grid is required
    here: a :class:`JigsawDataset` chooses it from the image size, so read ``dataset.task`` when it did.
    """
    if grid not in JIGSAW_GRIDS:
        raise ValueError(f'jigsaw grid must be one of {list(JIGSAW_GRIDS)}, got {grid!r}: the number of tiles and '
                         'of classes (2 -> 24, 3 -> 100 permutations by default) depend on it. Pass grid=, or read '
                         'JigsawDataset(...).task, which knows the grid chosen from the image size.')
    k = DEFAULT_NUM_PERMUTATIONS[grid] if num_permutations is None else int(num_permutations)
    _check_permutation_count(grid * grid, k)
    tiles = grid * grid
    return PretextTask(name='jigsaw', num_classes=k, collate_fn=default_collate, input_channels=None,
                       per_pixel=False, inputs_per_image=tiles,
                       head=f'shared trunk on B*{tiles} tiles, pooled features concatenated in slot order -> '
                            f'Linear(C*{tiles}, {k})')


class JigsawDataset(EpochSelectable, Dataset):
    """Item ``i`` is ``(tiles [G*G, C, t, t], y)``: the image's jittered tiles shuffled by permutation ``y``.

    Tile k is written to slot ``permutations[y][k]`` (module docstring); ``unshuffle(tiles, permutations[y])``
    restores grid order. ``y`` and the tile offsets are drawn from a generator seeded by ``(seed, epoch, i)``:
    the same seed, epoch and index give the same item, in any order and any worker. Call :meth:`set_epoch` to
    draw new permutations and offsets for another epoch (UnNAS draws fresh ones on every access); call it before
    each epoch and leave ``persistent_workers`` off so workers see it.

    Reference: Liu et al., "Are Labels Necessary for Neural Architecture Search?", ECCV 2020.

    Parameters
    ----------
    base
        Dataset of float images ``[C, H, W]``, items ``(image, label)`` or a bare image; labels are ignored.
    grid
        2 or 3; None picks 2 when the first image's shorter side is below 64 px, else 3.
    num_permutations
        K, the number of classes: default all 24 for grid 2 and 100 for grid 3 (the paper: 1000). Must not
        exceed ``(G*G)!``. K = (G*G)! uses all permutations in lexicographic order, fewer a max-Hamming set.
    seed
        Seed of the per-item permutation index and tile offsets.
    permutation_seed
        Seed of the max-Hamming set. Kept apart from ``seed`` on purpose: the set defines the classes, so a
        train and a validation dataset with different ``seed`` must still share it.
    jitter
        Crop each tile at a random offset inside its patch (default, as UnNAS); False crops the centre, which
        makes tiles deterministic in the image alone (useful for tests and visual checks).
    """

    collate_fn = staticmethod(default_collate)

    def __init__(self, base: Dataset, grid: Optional[int] = None, num_permutations: Optional[int] = None,
                 seed: int = 0, *, permutation_seed: int = 0, jitter: bool = True) -> None:
        derive_seed(seed)  # validates the seeds early
        derive_seed(permutation_seed)
        if len(base) == 0:
            raise ValueError('the base dataset is empty; the jigsaw task needs at least one image.')
        height, width = image_of_item(base[0], 'jigsaw').shape[-2:]
        if grid is None:
            grid = 2 if min(height, width) < SMALL_IMAGE_SIZE else 3
        if grid not in JIGSAW_GRIDS:
            raise ValueError(f'jigsaw grid must be one of {list(JIGSAW_GRIDS)} (or None to choose from the image '
                             f'size), got {grid!r}.')
        k = DEFAULT_NUM_PERMUTATIONS[grid] if num_permutations is None else int(num_permutations)
        _check_permutation_count(grid * grid, k)
        jigsaw_geometry(height, width, grid)  # fail early on images too small for the grid
        self.base, self.grid, self.seed, self.jitter = base, int(grid), int(seed), bool(jitter)
        self.permutation_seed = int(permutation_seed)
        if k == math.factorial(grid * grid):
            permutations = _all_permutations(grid * grid).astype(np.int64)
        else:
            permutations = hamming_permutations(grid * grid, k, permutation_seed)
        self.permutations = torch.from_numpy(permutations)
        self.num_classes = k
        self.task = jigsaw_task(self.grid, k)
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f'index {index} out of range for a jigsaw dataset of {len(self)} images.')
        image = image_of_item(self.base[index], 'jigsaw')
        patch_h, patch_w, tile = jigsaw_geometry(image.shape[-2], image.shape[-1], self.grid)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self._epoch, index % len(self)))
        label = int(torch.randint(len(self.permutations), (1,), generator=generator))
        tiles = self._tiles(image, patch_h, patch_w, tile, generator)
        return shuffle_tiles(tiles, self.permutations[label]), label

    def _tiles(self, image: torch.Tensor, patch_h: int, patch_w: int, tile: int,
               generator: torch.Generator) -> torch.Tensor:
        """The G*G tiles in grid (row-major) order, each cropped in its patch and normalised by its own stats."""
        n_tiles = self.grid * self.grid
        if self.jitter:
            rows = torch.randint(0, patch_h - tile + 1, (n_tiles,), generator=generator).tolist()
            cols = torch.randint(0, patch_w - tile + 1, (n_tiles,), generator=generator).tolist()
        else:
            rows, cols = [(patch_h - tile) // 2] * n_tiles, [(patch_w - tile) // 2] * n_tiles
        crops = []
        for k in range(n_tiles):
            top, left = (k // self.grid) * patch_h + rows[k], (k % self.grid) * patch_w + cols[k]
            crop = image[:, top:top + tile, left:left + tile]
            crops.append((crop - crop.mean()) / crop.std(correction=0).clamp(min=_STD_FLOOR))
        return torch.stack(crops)
