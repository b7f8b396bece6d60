"""Augmented views for contrastive supernet training (Pi-NAS): several random views of every image.

Reference: Jiefeng Peng, Jiqi Zhang, Changlin Li, Guangrun Wang, Xiaodan Liang, Liang Lin, "Pi-NAS: Improving
Neural Architecture Search by Reducing Supernet Training Consistency Shift", ICCV 2021, section 4.1: random
resize & crop, colour jitter, colour drop (grayscale), Gaussian blur and horizontal flip, after SimCLR / MoCo v2.

The pipeline is written on batched tensors, with every random parameter drawn from a generator seeded by
``(seed, epoch, image index)``. So item ``i`` is the same in any order, batch and worker, and a
:class:`ViewDataset` hands whole batches to :func:`augment_views` through ``__getitems__`` (one vectorised pass per
batch instead of a dozen small ops per image). Scaled for 32x32 inputs: the blur kernel is 10% of the side (odd,
at least 3 px) as in SimCLR, the crop keeps 20-100% of the area (MoCo v2), the hue range is Pi-NAS's 0.4.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
from typing import Any, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from .epochs import EpochSelectable
from .sources import CIFAR10_MEAN, CIFAR10_STD, derive_seed

__all__ = ['ViewConfig', 'ViewParams', 'ViewDataset', 'sample_view_params', 'augment_views', 'view_rng',
           'GRAY_WEIGHTS']

_logger = logging.getLogger(__name__)

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
_VIEW_STREAM = 0x5649_4557  # keeps view seeds apart from other streams derived from the same base seed
_CROP_ATTEMPTS = 10
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """Parameters of the view pipeline; the defaults are Pi-NAS's learning augmentation at 32x32.

    Attributes
    ----------
    size
        Output side in pixels.
    crop_scale, crop_ratio
        Area fraction and aspect-ratio range of the random resized crop.
    jitter_prob, brightness, contrast, saturation, hue
        Probability of colour jitter and its strengths (torchvision ``ColorJitter`` semantics, random op order).
    grayscale_prob
        Probability of colour drop.
    blur_prob, blur_sigma, blur_kernel
        Probability, sigma range and kernel side of the Gaussian blur (None: 10% of ``size``, odd, >= 3).
    flip_prob
        Probability of a horizontal flip.
    """

    size: int = 32
    crop_scale: Tuple[float, float] = (0.2, 1.0)
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.4
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    blur_kernel: Optional[int] = None
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f'ViewConfig.size must be a positive number of pixels, got {self.size!r}.')
        for name in ('crop_scale', 'crop_ratio', 'blur_sigma'):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f'ViewConfig.{name} must be a range (low, high) with 0 < low <= high, got '
                                 f'{getattr(self, name)!r}.')
        if self.crop_scale[1] > 1:
            raise ValueError('ViewConfig.crop_scale is a fraction of the image area, at most 1; got '
                             f'{self.crop_scale}.')
        for name in ('jitter_prob', 'grayscale_prob', 'blur_prob', 'flip_prob'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'ViewConfig.{name} is a probability in [0, 1], got {getattr(self, name)!r}.')
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise ValueError('ViewConfig: brightness, contrast and saturation must be >= 0 and hue in [0, 0.5], got '
                             f'{self.brightness}, {self.contrast}, {self.saturation}, {self.hue}.')
        if self.blur_kernel is not None and (self.blur_kernel < 1 or self.blur_kernel % 2 == 0):
            raise ValueError(f'ViewConfig.blur_kernel must be a positive odd number (or None), got {self.blur_kernel}.')

    @property
    def kernel_size(self) -> int:
        """The blur kernel side actually used."""
        if self.blur_kernel is not None:
            return self.blur_kernel
        return max(3, int(round(0.1 * self.size)) // 2 * 2 + 1)

    @classmethod
    def pinas(cls, size: int = 32) -> 'ViewConfig':
        """Pi-NAS's supernet-learning views (MoCo v2 style, hue 0.4)."""
        return cls(size=size)

    @classmethod
    def linear_eval(cls, size: int = 32) -> 'ViewConfig':
        """Pi-NAS's linear-evaluation augmentation: random resized crop and flip only."""
        return cls(size=size, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)


@dataclasses.dataclass
class ViewParams:
    """Random parameters of ``N`` views, one row each (see :func:`sample_view_params`).

    ``crop`` is ``[N, 4]`` (top, left, height, width) in source pixels; ``factors`` ``[N, 4]`` are the brightness,
    contrast, saturation and hue factors; ``order`` ``[N, 4]`` the order in which the jitter ops apply.
    """

    crop: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor

    @classmethod
    def cat(cls, parts: Sequence['ViewParams']) -> 'ViewParams':
        """Rows of several parameter sets, in order."""
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)})

    @classmethod
    def from_rows(cls, rows: Sequence[tuple]) -> 'ViewParams':
        """One tensor per field from per-view tuples ``(crop, flip, jitter, factors, order, gray, blur, sigma)``."""
        crop, flip, jitter, factors, order, gray, blur, sigma = zip(*rows)
        return cls(crop=torch.tensor(crop, dtype=torch.float32), flip=torch.tensor(flip),
                   jitter=torch.tensor(jitter), factors=torch.tensor(factors, dtype=torch.float32),
                   order=torch.tensor(order, dtype=torch.int64), gray=torch.tensor(gray),
                   blur=torch.tensor(blur), sigma=torch.tensor(sigma, dtype=torch.float32))


def view_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The generator of item ``index``'s views at ``epoch``: a Mersenne Twister seeded by the packed key.

    Python's ``random.Random`` hashes an integer seed of any size through ``init_by_array``, so distinct
    ``(seed, epoch, index)`` give unrelated streams; it seeds 2-3x faster than numpy's ``SeedSequence``.
    """
    if seed < 0 or not 0 <= epoch < 2 ** 32 or not 0 <= index < 2 ** 32:
        raise ValueError(f'view seeds need seed >= 0 and 0 <= epoch, index < 2**32; got {seed}, {epoch}, {index}.')
    return random.Random((int(seed) << 96) | (_VIEW_STREAM << 64) | (int(epoch) << 32) | int(index))


def _crop_box(rng: random.Random, height: int, width: int, config: ViewConfig) -> list:
    """torchvision's RandomResizedCrop box: up to 10 tries at a random area and ratio, else a centre crop."""
    area = height * width
    log_ratio = (math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1]))
    for _ in range(_CROP_ATTEMPTS):
        target = area * rng.uniform(*config.crop_scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return [rng.randint(0, height - h), rng.randint(0, width - w), h, w]
    ratio = width / height
    if ratio < config.crop_ratio[0]:
        w, h = width, int(round(width / config.crop_ratio[0]))
    elif ratio > config.crop_ratio[1]:
        w, h = int(round(height * config.crop_ratio[1])), height
    else:
        w, h = width, height
    return [(height - h) // 2, (width - w) // 2, h, w]


def _one_view(rng: random.Random, height: int, width: int, config: ViewConfig) -> tuple:
    crop = _crop_box(rng, height, width, config)
    jitter = rng.random() < config.jitter_prob
    strengths = (config.brightness, config.contrast, config.saturation)
    factors = [rng.uniform(max(0.0, 1 - s), 1 + s) for s in strengths] + [rng.uniform(-config.hue, config.hue)]
    order = [0, 1, 2, 3]
    rng.shuffle(order)
    gray = rng.random() < config.grayscale_prob
    blur = rng.random() < config.blur_prob
    sigma = rng.uniform(*config.blur_sigma)
    flip = rng.random() < config.flip_prob
    return crop, flip, jitter, factors, order, gray, blur, sigma


def sample_view_params(rng: random.Random, count: int, height: int, width: int,
                       config: ViewConfig) -> ViewParams:
    """Draw the parameters of ``count`` views of one ``height`` x ``width`` image from ``rng``.

    Every parameter is drawn for every view (even when its op is switched off), so the stream of draws does not
    depend on earlier coin flips beyond the crop's retries.
    """
    return ViewParams.from_rows([_one_view(rng, height, width, config) for _ in range(count)])


# -- batched ops on images in [0, 1], [N, C, H, W] -------------------------------------------------------------
def _resized_crop_and_flip(images: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resampling of each crop box to ``size`` x ``size``, mirrored where ``flip`` is set."""
    n, _, height, width = images.shape
    top, left, h, w = crop.unbind(1)
    sign = 1.0 - 2.0 * flip.float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w / width * sign
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta.to(images), [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode='bilinear', padding_mode='border', align_corners=False)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    weights = images.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = factor.view(-1, 1, 1, 1)
    return (factor * images + (1 - factor) * other).clamp_(0, 1)


def _rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    red, green, blue = images.unbind(1)
    value, _ = images.max(1)
    chroma = value - images.min(1)[0]
    flat = chroma == 0
    saturation = chroma / torch.where(flat, torch.ones_like(value), value)
    safe = torch.where(flat, torch.ones_like(chroma), chroma)
    r, g, b = (value - red) / safe, (value - green) / safe, (value - blue) / safe
    hue = torch.where(value == red, b - g, torch.where(value == green, 2.0 + r - b, 4.0 + g - r))
    hue = torch.where(flat, torch.zeros_like(hue), hue)
    return torch.stack((torch.remainder(hue / 6.0, 1.0), saturation, value), 1)


def _hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    # Channel c = V - V*S*clamp(min(k, 4 - k), 0, 1) with k = (n_c + 6H) mod 6 and n = 5, 3, 1 for r, g, b.
    hue, saturation, value = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    offsets = images.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = torch.remainder(offsets + hue * 6.0, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (value - value * saturation * ramp).clamp_(0, 1)


def _adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    hsv = _rgb_to_hsv(images)
    hsv[:, 0] = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(hsv)


def _jitter_op(op: int, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if op == BRIGHTNESS:
        return _blend(images, torch.zeros_like(images), factor)
    if op == CONTRAST:
        mean = _grayscale(images).mean((1, 2, 3), keepdim=True)
        return _blend(images, mean.expand_as(images), factor)
    if op == SATURATION:
        return _blend(images, _grayscale(images).expand_as(images), factor) if images.shape[1] == 3 else images
    return _adjust_hue(images, factor)


def _color_jitter(images: torch.Tensor, params: ViewParams) -> torch.Tensor:
    out = images.clone()
    for position in range(4):
        for op in range(4):
            rows = torch.nonzero(params.jitter & (params.order[:, position] == op)).flatten()
            if len(rows):
                out[rows] = _jitter_op(op, out[rows], params.factors[rows, op].to(out))
    return out


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma (reflect padding, as torchvision)."""
    n, channels, height, width = images.shape
    offsets = torch.arange(kernel, dtype=images.dtype) - (kernel - 1) / 2
    weights = torch.exp(-offsets.view(1, -1) ** 2 / (2 * sigma.to(images).view(-1, 1) ** 2))
    weights = (weights / weights.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # [N*C, k]
    pad = kernel // 2
    flat = images.reshape(1, n * channels, height, width)
    flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode='reflect'), weights.view(-1, 1, 1, kernel), groups=n * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode='reflect'), weights.view(-1, 1, kernel, 1), groups=n * channels)
    return flat.view(n, channels, height, width)


def augment_views(images: torch.Tensor, params: ViewParams, config: ViewConfig) -> torch.Tensor:
    """Apply one view per row: crop+flip, colour jitter, grayscale, blur; images and result in ``[0, 1]``.

    Parameters
    ----------
    images
        Float ``[N, C, H, W]`` with ``C`` 1 or 3, values in ``[0, 1]``.
    params
        ``N`` rows of view parameters (:func:`sample_view_params`).
    config
        The pipeline (output size, blur kernel).
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f'augment_views needs images [N, C, H, W] with 1 or 3 channels, got {tuple(images.shape)}.')
    if len(params.crop) != len(images):
        raise ValueError(f'augment_views got {len(images)} images but {len(params.crop)} rows of view parameters.')
    out = _resized_crop_and_flip(images, params.crop, params.flip, config.size)
    if bool(params.jitter.any()):
        out = _color_jitter(out, params)
    if bool(params.gray.any()) and out.shape[1] == 3:
        out = torch.where(params.gray.view(-1, 1, 1, 1), _grayscale(out).expand_as(out), out)
    if bool(params.blur.any()):
        rows = torch.nonzero(params.blur).flatten()
        out[rows] = _gaussian_blur(out[rows], params.sigma[rows], config.kernel_size)
    return out


class ViewDataset(EpochSelectable, Dataset):
    """Item ``i`` is ``(views [V, C, S, S], label)``: ``V`` random views of image ``i`` of ``base``.

    Wraps any image dataset: items ``(image, label, ...)`` or bare images; images as float tensors normalised with
    ``mean``/``std`` (what :func:`~nni_labelfree.data.image_source` yields), uint8 tensors or PIL images. The label is
    passed through (``-1`` when the base has none); Pi-NAS's supernet training never reads it, only linear
    evaluation does. Views are normalised with ``mean``/``std`` again. The view parameters of item ``i`` come from a
    generator seeded by ``(seed, epoch, i)``: call :meth:`set_epoch` for another epoch's views (leave
    ``persistent_workers`` off so workers see it).

    Reference: Peng et al., "Pi-NAS", ICCV 2021 (four views per image in its code, two in the paper's equations).

    Parameters
    ----------
    base
        The image dataset.
    num_views
        Views per image: 2 (the paper's equations) or 4 (its released code: two queries and two keys).
    seed
        Base seed of the view parameters.
    config
        The pipeline; default :meth:`ViewConfig.pinas` at the base images' size.
    mean, std
        Per-channel statistics the base float images are normalised with (and the views will be); None means the
        base images are in ``[0, 1]`` and views stay there.
    """

    def __init__(self, base: Dataset, num_views: int = 2, seed: int = 0, config: Optional[ViewConfig] = None, *,
                 mean: Optional[Sequence[float]] = CIFAR10_MEAN, std: Optional[Sequence[float]] = CIFAR10_STD) -> None:
        derive_seed(seed)
        if not isinstance(num_views, int) or num_views < 1:
            raise ValueError(f'num_views must be a positive integer (Pi-NAS: 2 or 4), got {num_views!r}.')
        if len(base) == 0:
            raise ValueError('the base dataset is empty; views need at least one image.')
        if (mean is None) != (std is None):
            raise ValueError('pass both mean and std (the base images\' normalisation) or neither (images in [0, 1]).')
        self.base, self.num_views, self.seed = base, num_views, int(seed)
        first, _ = self._load(0)
        self.channels, self.height, self.width = first.shape
        self.config = config or ViewConfig.pinas(size=int(self.height))
        self._stats = None if mean is None else (torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1),
                                                 torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))
        if self._stats is not None and len(self._stats[0]) != self.channels:
            raise ValueError(f'mean/std have {len(self._stats[0])} values but the images have {self.channels} '
                             'channels; pass per-channel statistics of the base images.')
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def _load(self, index: int) -> Tuple[torch.Tensor, int]:
        item = self.base[index]
        image, label = (item[0], item[1] if len(item) > 1 else -1) if isinstance(item, (tuple, list)) else (item, -1)
        if not torch.is_tensor(image):
            from torchvision.transforms.v2 import functional as TF  # deferred: PIL inputs only
            image = TF.pil_to_tensor(image)
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f'views need images [C, H, W] with 1 or 3 channels, got shape {tuple(image.shape)} at '
                             f'index {index}. Pass a dataset of images.')
        return image, int(label)

    def _to_unit(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype == torch.uint8:
            return image.float().div_(255.0)
        if not image.is_floating_point():
            raise TypeError(f'views need float or uint8 image tensors, got {image.dtype}.')
        image = image.float()
        if self._stats is not None:
            image = image * self._stats[1] + self._stats[0]
        return image.clamp(0, 1)

    def _normalise(self, views: torch.Tensor) -> torch.Tensor:
        return views if self._stats is None else (views - self._stats[0]) / self._stats[1]

    def _view_rows(self, index: int) -> list[tuple]:
        rng = view_rng(self.seed, self._epoch, index % len(self))
        return [_one_view(rng, int(self.height), int(self.width), self.config) for _ in range(self.num_views)]

    def view_params(self, index: int) -> ViewParams:
        """The parameters of item ``index``'s views at the current epoch."""
        return ViewParams.from_rows(self._view_rows(index))

    def __getitems__(self, indices: Sequence[int]) -> list:
        """Items for a whole batch in one vectorised pass (``DataLoader`` calls this when it exists)."""
        loaded = [self._load(i) for i in indices]
        shapes = {tuple(image.shape) for image, _ in loaded}
        if len(shapes) > 1:
            raise ValueError(f'views need images of one size in a dataset, got shapes {sorted(shapes)}; resize the '
                             'base images first (image_source(..., image_size=32) does).')
        images = torch.stack([self._to_unit(image) for image, _ in loaded]).repeat_interleave(self.num_views, 0)
        params = ViewParams.from_rows([row for i in indices for row in self._view_rows(int(i))])
        views = self._normalise(augment_views(images, params, self.config))
        views = views.view(len(indices), self.num_views, *views.shape[1:])
        return [(views[k], loaded[k][1]) for k in range(len(indices))]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f'index {index} out of range for a view dataset of {len(self)} images.')
        return self.__getitems__([index % len(self)])[0]

    def __repr__(self) -> str:
        return f'ViewDataset({len(self)} images, num_views={self.num_views}, seed={self.seed}, {self.config})'

    def describe(self) -> dict[str, Any]:
        """The settings as plain values (for configs and logs)."""
        return {'num_views': self.num_views, 'seed': self.seed, **dataclasses.asdict(self.config)}
