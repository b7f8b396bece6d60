"""sRGB <-> CIE Lab conversion and the 313 quantised ab bins of the colorization pretext task.

References
----------
- Richard Zhang, Phillip Isola, Alexei A. Efros, "Colorful Image Colorization", ECCV 2016: the ab plane is
  quantised with grid size 10 and the Q = 313 in-gamut bin centres are kept.
- Chenxi Liu et al., "Are Labels Necessary for Neural Architecture Search?", ECCV 2020: UnNAS uses those 313 bins
  as hard per-pixel targets.

Conversion (the standard formulas, D65 white, as ``skimage.color.rgb2lab``)
-------------------------------------------------------------------------
sRGB in [0, 1] is linearised (``c / 12.92`` below 0.04045, else ``((c + 0.055) / 1.055) ** 2.4``), mapped to XYZ
with the sRGB/D65 matrix, divided by the D65 white (0.95047, 1, 1.08883), and sent through CIE's ``f`` (cube root
above ``(6/29)^3``, a linear segment below). White is (100, 0, 0); pure red is about (53.24, 80.09, 67.20).

Gamut criterion that reproduces the 313 bins
--------------------------------------------
Candidates are the grid centres ``(a, b)`` with step 10 in [-110, 100]. A centre is kept when the 20 x 20 square
centred on it (Chebyshev distance <= 10) meets the convex hull of the ab projection of the whole sRGB gamut (every
colour of the RGB cube, i.e. every L in [0, 100]). Equivalently: the centre lies in the convex hull of the gamut's
ab points shifted by (+-10, +-10), which is how :func:`_compute_ab_bins` tests it, exactly, from the cube's faces.
This keeps exactly 313 centres; their lexicographic (a, then b) order starts ``[-90, 50], [-90, 60]`` like the
released ``pts_in_hull.npy`` (whose raw bytes are quoted in richzhang/colorization issue #23); the full set could
not be compared because the file was not available. The nearest excluded centre is 0.09 and the nearest kept
one 0.39 (ab units) from the boundary, so the count does not hinge on rounding. Variants tried and rejected:
centre in gamut for some L on a fine grid (229 bins), nearest-centre cells hit by an sRGB colour (261), the
+-5 cell meeting the hull (269), Euclidean distance <= 10*sqrt(2) from the gamut (313, but starting at [-100, 80]),
3 x 3 dilation of the hit cells (338), half-width 9.5 / 10.5 instead of 10 (309 / 316).
"""
from __future__ import annotations

import functools
import logging
from typing import Tuple, Union

import numpy as np
import torch

__all__ = ['NUM_AB_BINS', 'AB_GRID_STEP', 'rgb_to_lab', 'lab_to_rgb', 'ab_bins', 'quantize_ab', 'bin_to_ab']

_logger = logging.getLogger(__name__)

NUM_AB_BINS = 313
AB_GRID_STEP = 10
_AB_GRID = np.arange(-110, 101, AB_GRID_STEP)  # 22 centres per axis
_GAMUT_MARGIN = 10.0  # Chebyshev half-width of the square around each centre (see the module docstring)
_FACE_RESOLUTION = 65  # samples per edge of each RGB-cube face; 17 already gives the same 313 bins

_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
               (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)
_DELTA = 6.0 / 29.0

ArrayLike = Union[torch.Tensor, np.ndarray]


def _to_tensor(values: ArrayLike, what: str) -> Tuple[torch.Tensor, bool]:
    """``(tensor, was_numpy)``; rejects non-floating input, whose scale ([0, 255]?) would be ambiguous."""
    was_numpy = isinstance(values, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(values)) if was_numpy else values
    if not torch.is_tensor(tensor) or not tensor.is_floating_point():
        kind = getattr(tensor, 'dtype', type(tensor).__name__)
        raise TypeError(f'{what} must be a floating-point tensor or array, got {kind}. Convert uint8 images with '
                        'image.float() / 255.')
    return tensor, was_numpy


def _channels_last(tensor: torch.Tensor, channel_dim: int, channels: int, what: str) -> torch.Tensor:
    if tensor.dim() == 0 or tensor.shape[channel_dim] != channels:
        raise ValueError(f'{what} needs {channels} channels along dim {channel_dim}, got shape {tuple(tensor.shape)}. '
                         'Pass channel_dim= for batched or channels-last layouts.')
    return torch.movedim(tensor, channel_dim, -1)


def _back(tensor: torch.Tensor, channel_dim: int, was_numpy: bool) -> ArrayLike:
    tensor = torch.movedim(tensor, -1, channel_dim)
    return tensor.numpy() if was_numpy else tensor


def rgb_to_lab(rgb: ArrayLike, channel_dim: int = 0) -> ArrayLike:
    """Convert sRGB in [0, 1] to CIE Lab (D65): L in [0, 100], a and b roughly in [-128, 127].

    Parameters
    ----------
    rgb
        Float tensor or array with 3 channels along ``channel_dim`` (e.g. ``[3, H, W]`` or ``[3]``).
    channel_dim
        The channel dimension (1 for a ``[B, 3, H, W]`` batch, -1 for channels-last).

    Returns
    -------
    Same type, shape and dtype as ``rgb``, channels (L, a, b).
    """
    tensor, was_numpy = _to_tensor(rgb, 'rgb_to_lab input')
    x = _channels_last(tensor, channel_dim, 3, 'rgb_to_lab')
    linear = torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=x.dtype)
    xyz = (linear @ matrix.T) / torch.tensor(_D65_WHITE, dtype=x.dtype)
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp(min=_DELTA ** 3) ** (1.0 / 3.0), xyz / (3 * _DELTA ** 2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(-1)
    lab = torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-1)
    return _back(lab, channel_dim, was_numpy)


def lab_to_rgb(lab: ArrayLike, channel_dim: int = 0, clip: bool = True) -> ArrayLike:
    """Convert CIE Lab (D65) to sRGB, the inverse of :func:`rgb_to_lab`.

    Parameters
    ----------
    lab
        Float tensor or array with channels (L, a, b) along ``channel_dim``.
    channel_dim
        The channel dimension.
    clip
        Clip to [0, 1] (out-of-gamut colours land on the cube's surface); False keeps values outside [0, 1],
        which tells whether a colour is in the sRGB gamut.
    """
    tensor, was_numpy = _to_tensor(lab, 'lab_to_rgb input')
    x = _channels_last(tensor, channel_dim, 3, 'lab_to_rgb')
    lightness, a, b = x.unbind(-1)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-1)
    xyz = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4.0 / 29.0)) * torch.tensor(_D65_WHITE, dtype=x.dtype)
    linear = xyz @ torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).to(x.dtype).T
    if clip:
        linear = linear.clamp(0.0, 1.0)
    magnitude = linear.abs()
    encoded = torch.where(magnitude <= 0.0031308, 12.92 * magnitude,
                          1.055 * magnitude.clamp(min=0.0031308) ** (1.0 / 2.4) - 0.055)
    return _back(torch.sign(linear) * encoded, channel_dim, was_numpy)


def _rgb_cube_faces(resolution: int) -> torch.Tensor:
    """Points on the 6 faces of the RGB cube, ``[6 * resolution^2, 3]`` float64 (the gamut's ab hull lies there)."""
    values = torch.linspace(0.0, 1.0, resolution, dtype=torch.float64)
    u, v = torch.meshgrid(values, values, indexing='ij')
    faces = []
    for axis in range(3):
        others = [i for i in range(3) if i != axis]
        for level in (0.0, 1.0):
            face = torch.empty(resolution * resolution, 3, dtype=torch.float64)
            face[:, axis], face[:, others[0]], face[:, others[1]] = level, u.flatten(), v.flatten()
            faces.append(face)
    return torch.cat(faces)


def _compute_ab_bins(margin: float = _GAMUT_MARGIN, resolution: int = _FACE_RESOLUTION) -> np.ndarray:
    """The in-gamut ab bin centres ``[N, 2]`` (a-major order); 313 with the defaults. See the module docstring."""
    from scipy.spatial import ConvexHull  # deferred: only needed once per process

    ab = rgb_to_lab(_rgb_cube_faces(resolution), channel_dim=-1)[:, 1:].numpy()
    hull_points = ab[ConvexHull(ab).vertices]
    corners = np.array([[sa * margin, sb * margin] for sa in (-1, 1) for sb in (-1, 1)])
    grown = ConvexHull((hull_points[:, None, :] + corners[None]).reshape(-1, 2))
    grid_a, grid_b = np.meshgrid(_AB_GRID, _AB_GRID, indexing='ij')
    centres = np.stack([grid_a.ravel(), grid_b.ravel()], axis=1).astype(np.float64)
    inside = (centres @ grown.equations[:, :2].T + grown.equations[:, 2]).max(axis=1) <= 1e-9
    return centres[inside]


@functools.lru_cache(maxsize=None)
def _bin_tables() -> Tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """``(bins [313, 2] read-only, the same as a float64 tensor, lookup [22, 22] grid cell -> bin or -1)``.

    Computed once per process; callers must not modify the tensors.
    """
    bins = _compute_ab_bins()
    if len(bins) != NUM_AB_BINS:  # would mean the colour formulas above were changed
        raise RuntimeError(f'the gamut test kept {len(bins)} ab bins instead of {NUM_AB_BINS}; check rgb_to_lab.')
    bins.setflags(write=False)
    lookup = torch.full((len(_AB_GRID), len(_AB_GRID)), -1, dtype=torch.int64)
    cells = torch.from_numpy(np.round((bins - _AB_GRID[0]) / AB_GRID_STEP).astype(np.int64))
    lookup[cells[:, 0], cells[:, 1]] = torch.arange(len(bins))
    _logger.debug('Computed the %d in-gamut ab bins', len(bins))
    return bins, torch.tensor(bins), lookup


def ab_bins() -> np.ndarray:
    """The 313 quantised in-gamut ab bin centres, float64 ``[313, 2]`` in a-major order (a copy).

    Computed once per process by the gamut test in this module's docstring (Zhang et al., ECCV 2016).
    """
    return _bin_tables()[0].copy()


def quantize_ab(ab: ArrayLike, channel_dim: int = 0) -> ArrayLike:
    """Index of the nearest of the 313 ab bins (Euclidean, hard assignment) for every ab pair.

    Parameters
    ----------
    ab
        Float tensor or array with 2 channels (a, b) along ``channel_dim``, e.g. ``[2, H, W]`` or ``[2]``.
    channel_dim
        The channel dimension, which the result drops.

    Returns
    -------
    int64 tensor (or array, for array input) of bin indices in [0, 313), shape of ``ab`` without ``channel_dim``.
    Exact ties between two bins (a value exactly half-way) are broken by round-half-to-even on the grid.
    """
    tensor, was_numpy = _to_tensor(ab, 'quantize_ab input')
    pairs = _channels_last(tensor, channel_dim, 2, 'quantize_ab').to(torch.float64)
    _, bins, lookup = _bin_tables()
    flat = pairs.reshape(-1, 2)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError('quantize_ab got NaN or infinite ab values; check the Lab conversion of the input.')
    # The nearest grid point is the per-axis nearest; when it is one of the bins it is the nearest bin too.
    cells = torch.round((flat - float(_AB_GRID[0])) / AB_GRID_STEP).long().clamp_(0, len(_AB_GRID) - 1)
    indices = lookup[cells[:, 0], cells[:, 1]]
    missing = indices < 0  # out-of-gamut ab: fall back to an exhaustive search over the bins
    if bool(missing.any()):
        indices[missing] = torch.cdist(flat[missing], bins).argmin(dim=1)
    result = indices.reshape(pairs.shape[:-1])
    return result.numpy() if was_numpy else result


def bin_to_ab(indices: ArrayLike, channel_dim: int = 0) -> ArrayLike:
    """The ab centres of bin indices: shape of ``indices`` with a new channel dim of size 2 at ``channel_dim``.

    Returns float32 for tensors (float64 for arrays). Raises IndexError for indices outside [0, 313).
    """
    was_numpy = isinstance(indices, np.ndarray)
    tensor = torch.as_tensor(indices)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f'bin indices must be integers, got {tensor.dtype}.')
    if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) >= NUM_AB_BINS):
        raise IndexError(f'ab bin indices must lie in [0, {NUM_AB_BINS}), got values in '
                         f'[{int(tensor.min())}, {int(tensor.max())}].')
    centres = _bin_tables()[1][tensor.long()]
    centres = torch.movedim(centres, -1, channel_dim)
    return centres.numpy() if was_numpy else centres.float()
