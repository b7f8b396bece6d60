"""Colorization pretext task (UnNAS): predict each pixel's quantised ab colour from the L channel.

Reference: Chenxi Liu et al., "Are Labels Necessary for Neural Architecture Search?", ECCV 2020, after Zhang et al.,
"Colorful Image Colorization", ECCV 2016. As in UnNAS (``prepare_col``): the input is the L channel only,
normalised as ``(L / 100 - mean(RGB mean)) / mean(RGB std)``; the target is the nearest of the 313 in-gamut ab bins
for every pixel (hard assignment, no soft encoding, no class rebalancing), at the full input resolution. The task
itself does not augment: crop and flip happen in the base dataset, before the Lab conversion (as UnNAS flips before
it), which :class:`~nni_labelfree.strategies.UnNAS` does with :class:`~nni_labelfree.data.CropFlipDataset`.
"""
from __future__ import annotations

import logging
from typing import Sequence, Tuple

import torch
from torch.utils.data import Dataset, default_collate

from .pretext_base import PretextTask, image_of_item
from .pretext_lab import NUM_AB_BINS, ab_bins, bin_to_ab, lab_to_rgb, quantize_ab, rgb_to_lab
from .sources import CIFAR10_MEAN, CIFAR10_STD, derive_seed

__all__ = ['ColorizationDataset', 'colorization_task']

_logger = logging.getLogger(__name__)

_RANGE_TOLERANCE = 0.02  # un-normalised RGB this far outside [0, 1] means mean/std do not match the base


def colorization_task() -> PretextTask:
    """Metadata of the colorization task: 313 classes per pixel, L-channel input, default collate."""
    return PretextTask(name='colorization', num_classes=NUM_AB_BINS, collate_fn=default_collate, input_channels=1,
                       per_pixel=True, inputs_per_image=1,
                       head='1x1 conv C->313 on spatial features, bilinear upsample (align_corners=True) to the '
                            'input H x W, pixel-wise cross-entropy')


class ColorizationDataset(Dataset):
    """L channel in, per-pixel ab bin out: item ``i`` is ``(lightness [1, H, W] float, bins [H, W] int64)``.

    The base yields normalised RGB tensors; they are un-normalised with ``mean``/``std`` back to [0, 1] (clipped;
    a warning is logged once when values fall clearly outside, which means the statistics do not match the
    base), converted to Lab (D65, see :mod:`nni_labelfree.data.pretext_lab`), and split into the normalised L input
    and the :func:`quantize_ab` target.

    Reference: Liu et al., "Are Labels Necessary for Neural Architecture Search?", ECCV 2020.

    Parameters
    ----------
    base
        Dataset of RGB float images ``[3, H, W]`` normalised with ``mean``/``std``; items ``(image, label)`` or
        a bare image; labels are ignored.
    seed
        Kept for a uniform interface with the other pretext tasks; colorization makes no random choice.
    mean, std
        The per-channel statistics the base normalised its images with (CIFAR-10's by default, as
        :func:`nni_labelfree.data.image_source` uses). Their channel averages also normalise L.

    Raises
    ------
    ValueError
        When the base is empty, or its images are not RGB ``[3, H, W]`` (grayscale, feature vectors).
    """

    task: PretextTask = colorization_task()
    num_classes: int = NUM_AB_BINS
    collate_fn = staticmethod(default_collate)

    def __init__(self, base: Dataset, seed: int = 0, mean: Sequence[float] = CIFAR10_MEAN,
                 std: Sequence[float] = CIFAR10_STD) -> None:
        derive_seed(seed)  # validates the seed early
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f'mean and std must be the 3 per-channel statistics the base was normalised with '
                             f'(std > 0), got mean={tuple(mean)}, std={tuple(std)}; e.g. CIFAR10_MEAN, CIFAR10_STD.')
        if len(base) == 0:
            raise ValueError('the base dataset is empty; the colorization task needs at least one image.')
        self.base, self.seed = base, int(seed)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.lightness_mean = sum(self.mean) / 3.0
        self.lightness_std = sum(self.std) / 3.0
        self._range_warned = False
        ab_bins()  # compute the bins now, so forked loader workers inherit them
        self._rgb_image(0)  # fail early on grayscale or non-spatial bases

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        lab = rgb_to_lab(self._rgb_image(index))
        lightness = (lab[:1] / 100.0 - self.lightness_mean) / self.lightness_std
        return lightness, quantize_ab(lab[1:])

    def decode(self, lightness: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] ``[3, H, W]`` from an item's input and a bin map (target or prediction), for viewing."""
        lab_l = (lightness.double() * self.lightness_std + self.lightness_mean) * 100.0
        lab = torch.cat([lab_l, bin_to_ab(bins).double()], dim=0)
        return lab_to_rgb(lab).to(lightness.dtype)

    def _rgb_image(self, index: int) -> torch.Tensor:
        image = image_of_item(self.base[index], 'colorization')
        if image.shape[0] != 3:
            raise ValueError(f'colorization needs RGB images [3, H, W], got {image.shape[0]} channel(s) (shape '
                             f'{tuple(image.shape)}); a grayscale image has no colour to predict. Use an RGB image '
                             "source (e.g. 'cifar10' or an RGB 'imagefolder'), or another task ('rotation', 'jigsaw').")
        mean = torch.tensor(self.mean, dtype=image.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype).view(3, 1, 1)
        rgb = image * std + mean
        if not self._range_warned and (float(rgb.min()) < -_RANGE_TOLERANCE or float(rgb.max()) > 1 + _RANGE_TOLERANCE):
            self._range_warned = True
            _logger.warning('Item %d un-normalises to RGB values in [%.3f, %.3f], outside [0, 1]; clipping. Pass the '
                            'mean/std the base dataset normalised with (noise images are not colour images).',
                            index, float(rgb.min()), float(rgb.max()))
        return rgb.clamp_(0.0, 1.0)
