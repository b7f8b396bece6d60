"""The IFS core of the fractal generator: category search by filling rate and vectorised instance rendering.

References: Hirokatsu Kataoka et al., "Pre-training without Natural Images" (FractalDB), ACCV 2020; Xiangyu Dong
et al., "Can We Search Neural Architectures with Unreal Data?" (UnrealNAS), section 3.3.

A *category* is an IFS of 2..7 affine maps ``(x, y) -> (a x + b y + e, c x + d y + f)`` with coefficients uniform
in [-1, 1], each map picked with probability proportional to ``|a d - b c|``. :func:`search_categories` keeps a
candidate when its chaos-game point cloud, rescaled per axis to a 512 px canvas, lights at least 20 % of the
pixels (FractalDB's filling rate). :func:`render_fractals` draws *instances*: instance ``j`` multiplies the six
coefficients by row ``j % 25`` of FractalDB's weight table (:func:`fractal_weight_table`), paints a random 3x3
patch (9-bit mask) at every point of a canvas ``supersample`` times the image side, area-averages it down to the
requested side and applies one of the four flips at random.

The chaos game is vectorised: many independent chains of many images (or candidates) advance together, each
chain discarding ``burn_in`` steps from (0, 0) before its points are kept. Every random choice (the candidates,
the map sequence, the patch masks, the flips) comes from a generator seeded from ``(seed, what, index...)``, so
an image depends only on its category's parameters, its (category, instance) pair, the seed and the settings.
The dataset and the category files are in :mod:`nni_labelfree.data.fractal`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    'MAX_MAPS', 'IFSCategory', 'SearchSettings', 'RenderSettings', 'CategorySearchResult', 'seeded_generator',
    'draw_candidate', 'ifs_probabilities', 'fractal_weight_table', 'filling_rates', 'search_categories',
    'render_fractals',
]

_logger = logging.getLogger(__name__)

MAX_MAPS = 7
_SEARCH, _RENDER = 0, 1  # seed domains: candidates of the category search / rendered instances


@dataclasses.dataclass(frozen=True, eq=False)  # array fields: compare maps with np.array_equal
class IFSCategory:
    """One fractal category: its affine maps, their probabilities and how it was found.

    Attributes
    ----------
    maps
        float64 ``[N, 6]``, rows ``(a, b, c, d, e, f)``.
    probabilities
        float64 ``[N]``, proportional to ``|a d - b c|``, summing to 1.
    filling_rate
        Filling rate measured by the search (NaN for hand-made categories).
    candidate
        Index of the search candidate it came from (-1 for hand-made ones).
    """

    maps: np.ndarray
    probabilities: np.ndarray
    filling_rate: float = float('nan')
    candidate: int = -1

    @classmethod
    def from_maps(cls, maps: Sequence[Sequence[float]], filling_rate: float = float('nan'),
                  candidate: int = -1) -> 'IFSCategory':
        """A category from ``[N, 6]`` coefficients; probabilities follow :func:`ifs_probabilities`."""
        maps = np.asarray(maps, dtype=np.float64)
        return cls(maps, ifs_probabilities(maps), float(filling_rate), int(candidate))


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """Category search (FractalDB's ``ifs_search.py`` defaults: rate 0.2, 100k points, 512 px, padding 6)."""

    min_filling_rate: float = 0.2
    num_points: int = 100_000
    canvas_size: int = 512
    padding: int = 6
    min_maps: int = 2
    max_maps: int = MAX_MAPS
    chains: int = 1000
    burn_in: int = 20
    batch_size: int = 32
    max_candidates: int = 2000  # per requested category

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_filling_rate < 1.0:
            raise ValueError(f'min_filling_rate must be in [0, 1), got {self.min_filling_rate}; FractalDB uses 0.2.')
        if not 2 <= self.min_maps <= self.max_maps <= MAX_MAPS:
            raise ValueError(f'need 2 <= min_maps <= max_maps <= {MAX_MAPS}, got {self.min_maps}..{self.max_maps}.')
        _check_positive(num_points=self.num_points, chains=self.chains, batch_size=self.batch_size,
                        max_candidates=self.max_candidates, canvas_size=self.canvas_size - 2 * self.padding)


@dataclasses.dataclass(frozen=True)
class RenderSettings:
    """Instance rendering: canvas ``supersample`` x the image side, ``points_per_pixel`` chaos-game points per
    canvas pixel, FractalDB's weight step (0.4: scales 0.2, 0.6, 1.4, 1.8), ``padding`` canvas pixels."""

    supersample: int = 2
    points_per_pixel: float = 0.5
    weight_step: float = 0.4
    chains: int = 16
    burn_in: int = 20
    padding: int = 1
    batch_size: int = 256

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight_step < 0.5:
            raise ValueError(f'weight_step must be in [0, 0.5) so every scale 1 +- 2*step stays positive, got '
                             f'{self.weight_step}; FractalDB uses 0.4, 0.2 or 0.1.')
        _check_positive(supersample=self.supersample, points_per_pixel=self.points_per_pixel, chains=self.chains,
                        batch_size=self.batch_size)


@dataclasses.dataclass
class CategorySearchResult:
    """What :func:`search_categories` found: accepted categories, every rejected candidate before the last
    acceptance (with its measured filling rate), the seed, the settings and the wall time."""

    accepted: List[IFSCategory]
    rejected: List[IFSCategory]
    seed: int
    settings: SearchSettings
    seconds: float


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f'{name} must be positive, got {value}.')


def seeded_generator(seed: int, *keys: int) -> np.random.Generator:
    """A PCG64 generator whose state and stream are hashed from ``(seed, *keys)``.

    Setting the state directly costs a few microseconds, against tens for a ``SeedSequence``; that matters when
    every rendered image gets its own generator. Different keys give unrelated streams (distinct increments).
    """
    if int(seed) != seed or seed < 0 or any(int(k) != k or k < 0 for k in keys):
        raise ValueError(f'seed and keys must be non-negative integers, got seed={seed!r}, keys={keys}.')
    digest = hashlib.blake2b(':'.join(str(int(v)) for v in (seed, *keys)).encode(), digest_size=32).digest()
    bit_generator = np.random.PCG64(0)
    bit_generator.state = {'bit_generator': 'PCG64', 'has_uint32': 0, 'uinteger': 0,
                           'state': {'state': int.from_bytes(digest[:16], 'little'),
                                     'inc': int.from_bytes(digest[16:], 'little') | 1}}
    return np.random.Generator(bit_generator)


def ifs_probabilities(maps: np.ndarray) -> np.ndarray:
    """Map probabilities proportional to the absolute determinant ``|a d - b c|`` (FractalDB, UnrealNAS)."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 2 or maps.shape[1] != 6 or not 1 <= len(maps) <= MAX_MAPS:
        raise ValueError(f'maps must be [N, 6] rows (a, b, c, d, e, f) with 1 <= N <= {MAX_MAPS}, got shape '
                         f'{maps.shape}.')
    determinants = np.abs(maps[:, 0] * maps[:, 3] - maps[:, 1] * maps[:, 2])
    if not determinants.sum() > 0:
        raise ValueError('every map of this IFS has determinant 0, so none can be picked; pass maps that are '
                         'not all degenerate.')
    return determinants / determinants.sum()


def fractal_weight_table(step: float = 0.4) -> np.ndarray:
    """FractalDB's 25 instance weights ``[25, 6]``: the identity, then each coefficient alone scaled by
    ``1 - 2 step, 1 - step, 1 + step, 1 + 2 step``."""
    table = np.ones((25, 6))
    for coefficient in range(6):
        for k, scale in enumerate((1 - 2 * step, 1 - step, 1 + step, 1 + 2 * step)):
            table[1 + 4 * coefficient + k, coefficient] = scale
    return table


def _pack(maps_list: Sequence[np.ndarray], probabilities_list: Sequence[np.ndarray]):
    """Pad systems to MAX_MAPS maps: coefficients as six flat float32 tables, cumulative probabilities."""
    coefficients = np.zeros((len(maps_list), MAX_MAPS, 6), np.float32)
    cumulative = np.ones((len(maps_list), MAX_MAPS), np.float32)
    for index, (maps, probabilities) in enumerate(zip(maps_list, probabilities_list)):
        coefficients[index, :len(maps)] = maps
        cumulative[index, :len(maps)] = np.cumsum(probabilities)
    return [np.ascontiguousarray(coefficients[..., k].reshape(-1)) for k in range(6)], cumulative


def _draw_picks(rngs: Sequence[np.random.Generator], cumulative: np.ndarray, num_maps: Sequence[int],
                steps: int, chains: int) -> np.ndarray:
    """Flat map indices ``[steps, B, chains]``: per system, the first map whose cumulative probability reaches
    ``u ~ U(0, 1)`` (compare-and-count, several times faster than ``searchsorted``), offset by ``b * MAX_MAPS``."""
    picks = np.empty((steps, len(rngs), chains), np.int32)
    for index, (rng, count) in enumerate(zip(rngs, num_maps)):
        uniforms = rng.random((steps, chains), dtype=np.float32)
        column = np.full((steps, chains), index * MAX_MAPS, np.int32)
        for threshold in cumulative[index, :count - 1]:
            column += uniforms > threshold
        picks[:, index] = column
    return picks


def _chaos_game(coefficients: List[np.ndarray], picks: np.ndarray, burn_in: int) -> Tuple[np.ndarray, np.ndarray]:
    """Advance ``M`` chains from (0, 0) for each of ``B`` systems (``picks``: ``[steps, B, M]``); returns the kept
    points x, y ``[steps - burn_in, B, M]``, non-finite where a system diverged."""
    steps, count, chains = picks.shape
    x, y = np.zeros((count, chains), np.float32), np.zeros((count, chains), np.float32)
    xs = np.empty((steps - burn_in, count, chains), np.float32)
    ys = np.empty_like(xs)
    with np.errstate(all='ignore'):
        for step in range(steps):
            a, b, c, d, e, f = (table.take(picks[step]) for table in coefficients)
            new_x = a * x
            new_x += b * y
            new_x += e
            y *= d
            y += c * x
            y += f
            x = new_x
            if step >= burn_in:
                xs[step - burn_in], ys[step - burn_in] = x, y
    return xs, ys


def _rescale(values: np.ndarray, finite: Optional[np.ndarray], span: int) -> np.ndarray:
    """Per system (axis 1 of ``[steps, B, M]``): subtract the minimum, divide by the range, times ``span``, as
    int32 in [0, span]. x and y are scaled separately (aspect not kept, as in FractalDB); non-finite entries
    (``finite`` False) give 0."""
    with np.errstate(all='ignore'):
        if finite is None:
            low, high = values.min(axis=(0, 2), keepdims=True), values.max(axis=(0, 2), keepdims=True)
        else:
            masked = np.where(finite, values, np.nan)
            low = np.nan_to_num(np.nanmin(masked, axis=(0, 2), keepdims=True))
            high = np.nan_to_num(np.nanmax(masked, axis=(0, 2), keepdims=True))
            values = np.where(finite, values, low)
        # the range in float64: high - low can overflow float32 for a diverging system
        scale = (span / np.maximum(high.astype(np.float64) - low, 1e-30)).astype(np.float32)
        scaled = values - low
        scaled *= scale
    return np.minimum(scaled, span, out=scaled).astype(np.int32)


def _pixel_indices(xs: np.ndarray, ys: np.ndarray, side: int, span: int, padding: int) -> np.ndarray:
    """Flat canvas indices ``b side^2 + row side + col`` with row, col in ``[padding, padding + span]``; ``-1``
    for non-finite points (they are dropped, as FractalDB drops NaN points)."""
    finite = np.isfinite(xs) & np.isfinite(ys)
    finite = None if finite.all() else finite
    count = xs.shape[1]
    dtype = np.int32 if count * side * side < 2 ** 31 else np.int64
    flat = (_rescale(ys, finite, span).astype(dtype, copy=False) + padding) * side
    flat += _rescale(xs, finite, span)
    flat += (np.arange(count, dtype=dtype) * side * side + padding)[None, :, None]
    return flat if finite is None else np.where(finite, flat, -1)


def draw_candidate(seed: int, candidate: int, settings: SearchSettings = SearchSettings()):
    """Candidate ``candidate`` of the category search: ``(maps [N, 6], generator)``, the generator positioned to
    draw its chaos game next (so ``filling_rates([maps], [generator])`` reproduces the search's rate)."""
    rng = seeded_generator(seed, _SEARCH, candidate)
    return rng.uniform(-1.0, 1.0, (int(rng.integers(settings.min_maps, settings.max_maps + 1)), 6)), rng


def filling_rates(maps_list: Sequence[np.ndarray], rngs: Sequence[np.random.Generator],
                  settings: SearchSettings = SearchSettings()) -> np.ndarray:
    """Filling rate of each IFS: the fraction of canvas pixels hit by its chaos-game points, one pixel a point.

    ``settings.num_points`` points per system (rounded up to a multiple of ``chains``; every chain drops its
    first ``burn_in`` steps), rescaled per axis to ``[padding, canvas_size - 1 - padding]``; ``rngs[i]`` draws
    system ``i``'s map sequence.
    """
    if len(maps_list) != len(rngs):
        raise ValueError(f'got {len(maps_list)} systems but {len(rngs)} generators; pass one generator per system.')
    coefficients, cumulative = _pack(maps_list, [ifs_probabilities(maps) for maps in maps_list])
    steps = -(-settings.num_points // settings.chains) + settings.burn_in
    picks = _draw_picks(rngs, cumulative, [len(m) for m in maps_list], steps, settings.chains)
    xs, ys = _chaos_game(coefficients, picks, settings.burn_in)
    side, count = settings.canvas_size, len(maps_list)
    flat = _pixel_indices(xs, ys, side, side - 1 - 2 * settings.padding, settings.padding)
    canvas = np.zeros(count * side * side + 1, bool)  # the last cell collects dropped points
    canvas[flat.reshape(-1)] = True
    return canvas[:-1].reshape(count, -1).mean(axis=1)


def search_categories(num_categories: int, seed: int = 0,
                      settings: SearchSettings = SearchSettings()) -> CategorySearchResult:
    """Draw random IFS candidates (:func:`draw_candidate`) until ``num_categories`` of them reach the
    filling-rate threshold (FractalDB's category search).

    Candidates are tried in order ``k = 0, 1, ...``; batches only group the work, so the result does not depend
    on ``batch_size``.

    Raises
    ------
    ValueError
        When ``max_candidates * num_categories`` candidates yield fewer categories than asked for.
    """
    _check_positive(num_categories=num_categories)
    start, accepted, rejected, next_candidate = time.perf_counter(), [], [], 0
    limit = settings.max_candidates * num_categories
    while len(accepted) < num_categories:
        if next_candidate >= limit:
            raise ValueError(f'only {len(accepted)} of {num_categories} categories reached filling rate '
                             f'{settings.min_filling_rate} in {limit} candidates; lower min_filling_rate or raise '
                             'max_candidates.')
        batch = range(next_candidate, min(next_candidate + settings.batch_size, limit))
        maps_list, rngs = zip(*(draw_candidate(seed, k, settings) for k in batch))
        for k, maps, rate in zip(batch, maps_list, filling_rates(maps_list, rngs, settings)):
            if len(accepted) < num_categories:
                (accepted if rate >= settings.min_filling_rate else rejected).append(
                    IFSCategory.from_maps(maps, float(rate), k))
        next_candidate = batch.stop
    seconds = time.perf_counter() - start
    _logger.info('Found %d fractal categories in %d candidates (%.1f s)', len(accepted),
                 len(accepted) + len(rejected), seconds)
    return CategorySearchResult(accepted, rejected, int(seed), settings, seconds)


def render_fractals(categories: Sequence[IFSCategory], category_ids: Sequence[int], instance_ids: Sequence[int],
                    image_size: int = 32, seed: int = 0,
                    settings: RenderSettings = RenderSettings()) -> np.ndarray:
    """Render gray fractal instances as uint8 ``[N, image_size, image_size]``: 0 is background, 255 a fully
    painted pixel (values in between are partly painted ``supersample x supersample`` blocks).

    Image ``n`` is instance ``instance_ids[n]`` of ``categories[category_ids[n]]``; all its random choices come
    from ``seeded_generator(seed, 1, category, instance)``, so it does not depend on the other images.
    """
    category_ids, instance_ids = np.asarray(category_ids, np.int64), np.asarray(instance_ids, np.int64)
    if category_ids.ndim != 1 or category_ids.shape != instance_ids.shape:
        raise ValueError('category_ids and instance_ids must be 1-D sequences of the same length.')
    if len(category_ids) and not (0 <= category_ids.min() and category_ids.max() < len(categories)
                                  and instance_ids.min() >= 0):
        raise ValueError(f'category ids must be in [0, {len(categories)}) and instance ids >= 0.')
    _check_positive(image_size=image_size)
    smallest = -(-(4 + 2 * settings.padding) // settings.supersample)  # a canvas fitting one patch and padding
    if image_size < smallest:
        raise ValueError(f'image_size={image_size} is too small for 3x3 patches on a {settings.supersample}x '
                         f'canvas with padding {settings.padding}; use image_size >= {smallest}.')
    images = np.empty((len(category_ids), image_size, image_size), np.uint8)
    for start in range(0, len(category_ids), settings.batch_size):
        chunk = slice(start, start + settings.batch_size)
        images[chunk] = _render_batch(categories, category_ids[chunk], instance_ids[chunk], image_size, seed,
                                      settings)
    return images


def _render_batch(categories, category_ids, instance_ids, image_size: int, seed: int,
                  settings: RenderSettings) -> np.ndarray:
    side = image_size * settings.supersample
    kept_steps = -(-max(1, round(settings.points_per_pixel * side * side)) // settings.chains)
    steps = kept_steps + settings.burn_in
    weights = fractal_weight_table(settings.weight_step)
    maps_list = [categories[c].maps * weights[j % len(weights)] for c, j in zip(category_ids, instance_ids)]
    coefficients, cumulative = _pack(maps_list, [categories[c].probabilities for c in category_ids])
    rngs = [seeded_generator(seed, _RENDER, c, j) for c, j in zip(category_ids, instance_ids)]
    picks = _draw_picks(rngs, cumulative, [len(m) for m in maps_list], steps, settings.chains)
    masks = np.stack([rng.integers(1, 512, (kept_steps, settings.chains), dtype=np.uint16) for rng in rngs], 1)
    flips = np.array([rng.integers(4) for rng in rngs])
    xs, ys = _chaos_game(coefficients, picks, settings.burn_in)
    flat = _pixel_indices(xs, ys, side, side - 3 - 2 * settings.padding, settings.padding)
    canvas = _paint_patches(flat, masks, len(maps_list), side)
    return _apply_flips(_downsample(canvas, settings.supersample), flips)


def _paint_patches(flat: np.ndarray, masks: np.ndarray, count: int, side: int) -> np.ndarray:
    """Paint at every point the 3x3 patch whose 9 bits are its mask (bit ``3 r + c`` = offset ``(r, c)``)."""
    merged = np.zeros(count * side * side + 1, np.uint16)  # OR of the masks of the points on each pixel
    np.bitwise_or.at(merged, flat.reshape(-1), masks.reshape(-1))
    merged = merged[:-1].reshape(count, side, side)
    canvas, bits, has_bit = np.zeros((count, side, side), bool), np.empty_like(merged), np.empty(merged.shape, bool)
    for bit in range(9):
        row, col = divmod(bit, 3)
        np.not_equal(np.bitwise_and(merged, np.uint16(1 << bit), out=bits), 0, out=has_bit)
        canvas[:, row:, col:] |= has_bit[:, :side - row, :side - col]
    return canvas


def _downsample(canvas: np.ndarray, factor: int) -> np.ndarray:
    """Area-average ``factor x factor`` blocks of a boolean canvas to uint8 gray levels (0..255)."""
    counts = np.zeros((canvas.shape[0], canvas.shape[1] // factor, canvas.shape[2] // factor), np.uint16)
    for row in range(factor):
        for col in range(factor):
            counts += canvas[:, row::factor, col::factor]
    return np.rint(np.arange(factor * factor + 1) * (255.0 / (factor * factor))).astype(np.uint8)[counts]


def _apply_flips(images: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Flip code 0: none, 1: left-right, 2: up-down, 3: both."""
    images[(flips & 1) == 1] = images[(flips & 1) == 1, :, ::-1]
    images[(flips & 2) == 2] = images[(flips & 2) == 2, ::-1, :]
    return images
