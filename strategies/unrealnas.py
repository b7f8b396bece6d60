"""UnrealNAS: DARTS or SGAS searching on unreal data, as an NNI one-shot strategy.

Reference: Zhen Dong, Kaicheng Zhou, Guohao Li, Qiang Zhou, Mingfei Guo, Bernard Ghanem, Kurt Keutzer, Shanghang
Zhang, "Can We Search Neural Architectures with Unreal Data?" (UnrealNAS), arXiv 2022; sections 3.3, 4.1 and
appendix 7 and 9.

Only the data changes: the evaluator's loaders are replaced by an unreal dataset
(:func:`nni_labelfree.data.unreal_dataset`) whose "validation" half is the training images flipped horizontally,
labels unchanged:

- ``'rlrd'``: the evaluator's training images (never their labels) with random labels;
- ``'rlgd'``: FractalDB-style fractals with random labels (no real data; shapes from the evaluator's images or
  ``image_shape``);
- ``'rlrn'``: N(0, 1) noise images with random labels (idem).

The search is :class:`~nni_labelfree.strategies.SGAS` (``algorithm='sgas'``) or the same module with the decision
schedule off, i.e. first-order DARTS (``algorithm='darts'``; NNI's DARTS loop, exported by the DARTS genotype
rule). The paper's settings are the defaults: weight decay 0 on weights and alphas, zero-initialised alphas,
Adam betas (0.5, 0.99) for the alphas, 5 warm-up epochs (alphas frozen) for DARTS; SGAS keeps SGAS's schedule
(decisions after epoch 10, then every 5), as the paper's appendix 9 does. Epochs and learning rates come from the
evaluator (paper: 55 epochs for DARTS, 50 for SGAS, SGD lr 0.025 cosine, batch 64).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from torch import nn
from torch.utils.data import DataLoader, Dataset

from nni.nas.nn.pytorch import ModelSpace

from nni_labelfree.data import EpochShuffleSampler, unreal_dataset

from .sgas import SGAS

__all__ = ['UnrealNAS', 'UNREAL_DATA', 'UNREAL_ALGORITHMS']

_logger = logging.getLogger(__name__)

UNREAL_DATA = ('rlrd', 'rlgd', 'rlrn')
UNREAL_ALGORITHMS = ('darts', 'sgas')


def _first_image_shape(dataset: Dataset) -> tuple[int, ...]:
    item = dataset[0]
    image = item[0] if isinstance(item, (tuple, list)) else item
    if callable(getattr(image, 'getbands', None)):  # a PIL image
        return len(image.getbands()), image.height, image.width
    shape = tuple(getattr(image, 'shape', ()))
    if len(shape) != 3:
        raise TypeError(f'UnrealNAS reads image shapes from the evaluator\'s training data, but its first item is '
                        f'{type(image).__name__} of shape {shape}; expected a [C, H, W] tensor. Add a ToTensor '
                        'transform, or pass image_shape=(C, H, W) (RLGD/RLRN).')
    return shape


class UnrealNAS(SGAS):
    """UnrealNAS (Dong et al., 2022) as a drop-in NNI one-shot strategy.

    ``NasExperiment(space, evaluator, UnrealNAS('rlgd', 'sgas')).run()``: the evaluator supplies the trainer, the
    weight optimiser and (RLRD only) images or (RLGD/RLRN) their shape and count; its labels are never read.

    Parameters
    ----------
    data
        ``'rlrd'``, ``'rlgd'`` or ``'rlrn'`` (see the module docstring).
    algorithm
        ``'darts'`` or ``'sgas'``.
    num_classes
        Random classes (paper: 1000 for RLRD, 5000 for RLGD/RLRN); default: the space's classifier outputs, which
        must equal it (build the space with ``num_classes=...``).
    image_shape
        ``(C, H, W)`` with ``H == W`` for RLGD/RLRN; default: the evaluator's first training image.
    num_images
        Images in the unreal set (train and flipped val alike); default: as many as the evaluator's training set.
    seed
        Seeds the unreal data, the random labels and the shuffling.
    weight_decay, arc_weight_decay, arc_betas, alpha_init
        Paper defaults: 0, 0, (0.5, 0.99), ``'zeros'``.
    warmup_epochs
        Epochs with frozen alphas; default 5 for DARTS, 0 for SGAS (whose own schedule has a 10-epoch warm-up).
    data_kwargs
        Extra arguments of :func:`~nni_labelfree.data.unreal_dataset`.
    **kwargs
        Arguments of :class:`~nni_labelfree.strategies.SGAS` (decision schedule, criterion, ...).
    """

    def __init__(self, data: str = 'rlgd', algorithm: str = 'darts', *, num_classes: int | None = None,
                 image_shape: Sequence[int] | None = None, num_images: int | None = None, seed: int = 0,
                 weight_decay: float | None = 0.0, arc_weight_decay: float = 0.0,
                 arc_betas: tuple[float, float] = (0.5, 0.99), alpha_init: str = 'zeros',
                 warmup_epochs: int | None = None, data_kwargs: dict | None = None, **kwargs: Any):
        if data not in UNREAL_DATA:
            raise ValueError(f'Unknown UnrealNAS data {data!r}; expected one of {", ".join(UNREAL_DATA)}.')
        if algorithm not in UNREAL_ALGORITHMS:
            raise ValueError(f'Unknown UnrealNAS algorithm {algorithm!r}; expected one of '
                             f'{", ".join(UNREAL_ALGORITHMS)}.')
        if warmup_epochs is None:
            warmup_epochs = 5 if algorithm == 'darts' else 0
        super().__init__(weight_decay=weight_decay, arc_weight_decay=arc_weight_decay, arc_betas=arc_betas,
                         alpha_init=alpha_init, seed=seed, warmup_epochs=warmup_epochs, **kwargs)
        self.data, self.algorithm = data, algorithm
        self.decide = algorithm == 'sgas'
        self.num_classes = num_classes
        self.image_shape = _check_shape(image_shape)
        if num_images is not None and (isinstance(num_images, bool) or not isinstance(num_images, int)
                                       or num_images < 1):
            raise ValueError(f'UnrealNAS: num_images must be a positive integer, got {num_images!r}.')
        self.num_images = num_images
        self.data_kwargs = dict(data_kwargs or {})
        self._in_channels: int | None = None

    # -- model and evaluator --------------------------------------------------------------------------------------
    def mutate_model(self, model: ModelSpace) -> ModelSpace:
        """SGAS's supernet, after checking that the space's classifier has ``num_classes`` outputs."""
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)] if isinstance(model, nn.Module) else []
        if not linears:
            raise ValueError(f'UnrealNAS needs a space whose output comes from an nn.Linear classifier; '
                             f'{type(model).__name__} has none. Add a linear classification head.')
        outputs = linears[-1].out_features
        if self.num_classes is None:
            self.num_classes = outputs
        elif self.num_classes != outputs:
            raise ValueError(f'UnrealNAS: num_classes={self.num_classes} random classes, but the space\'s classifier '
                             f'has {outputs} outputs. Build the space with num_classes={self.num_classes} (e.g. '
                             f'DartsSpace(num_classes={self.num_classes})), or drop num_classes to use {outputs}.')
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        self._in_channels = convs[0].in_channels if convs else None
        return super().mutate_model(model)

    def mutate_evaluator(self, evaluator):
        """NNI's one-shot wrapping; refuses an evaluator whose accuracy metric counts other classes."""
        metrics = getattr(getattr(evaluator, 'module', None), 'metrics', {}) or {}
        for name, metric in dict(metrics).items():
            counted = getattr(metric, 'num_classes', None)
            if counted is not None and self.num_classes is not None and counted != self.num_classes:
                raise ValueError(f'UnrealNAS draws {self.num_classes} random classes, but the evaluator\'s {name!r} '
                                 f'metric counts {counted}. Build it as Classification(num_classes='
                                 f'{self.num_classes}, ...).')
        return super().mutate_evaluator(evaluator)

    # -- data -----------------------------------------------------------------------------------------------------
    def unreal_datasets(self, images: Dataset) -> tuple[Dataset, Dataset]:
        """The unreal ``(train, flipped val)`` pair for the evaluator's training set ``images``."""
        if self.num_classes is None:
            raise RuntimeError('UnrealNAS: call mutate_model(space) before building the data (NasExperiment does).')
        shape = self._image_shape(images)
        if self._in_channels is not None and shape[0] != self._in_channels:
            raise ValueError(f'UnrealNAS: {self.data.upper()} images have {shape[0]} channels but the space\'s first '
                             f'convolution takes {self._in_channels}. Build the space with in_channels={shape[0]}, '
                             f'or pass image_shape=({self._in_channels}, H, W) (RLGD/RLRN).')
        kwargs = dict(num_images=self.num_images or len(images), image_size=shape[1], channels=shape[0],
                      num_classes=self.num_classes, seed=self.seed, **self.data_kwargs)
        if self.data == 'rlrd':
            kwargs.update(images=images, num_images=self.num_images)  # None: every image, in its order
        return unreal_dataset(self.data, **kwargs)

    def _image_shape(self, images: Dataset) -> tuple[int, ...]:
        if self.data != 'rlrd' and self.image_shape is not None:
            return self.image_shape
        shape = _first_image_shape(images)
        if self.image_shape is not None and shape != self.image_shape:
            raise ValueError(f'UnrealNAS: RLRD uses the evaluator\'s images, of shape {shape}, but image_shape='
                             f'{self.image_shape}. Drop image_shape for RLRD.')
        if shape[1] != shape[2]:
            raise ValueError(f'UnrealNAS generates square images; the evaluator\'s are {shape[1]}x{shape[2]}. Pass '
                             'image_shape=(C, S, S).')
        return shape

    def _unreal_loader(self, dataset: Dataset, like: DataLoader, offset: int) -> DataLoader:
        if len(dataset) < (like.batch_size or 1):
            raise ValueError(f'UnrealNAS: {len(dataset)} unreal images are fewer than one batch of '
                             f'{like.batch_size}. Use more images (num_images) or a smaller batch.')
        sampler = EpochShuffleSampler(len(dataset), self.seed + offset)
        if self._module is not None:
            self._module.epoch_dependents.append(sampler)
        return DataLoader(dataset, batch_size=like.batch_size, sampler=sampler, drop_last=like.drop_last,
                          num_workers=like.num_workers, pin_memory=like.pin_memory)

    def train_dataloader(self, train_dataloader_fn, val_dataloader_fn) -> dict[str, DataLoader]:
        """``{'train': unreal images, 'val': the same flipped}``, from the evaluator's training loader."""
        loader = train_dataloader_fn()
        if not isinstance(loader, DataLoader):
            raise TypeError(f'UnrealNAS needs a single torch DataLoader in the evaluator, got {type(loader).__name__}.')
        train, val = self.unreal_datasets(loader.dataset)
        return {'train': self._unreal_loader(train, loader, 0), 'val': self._unreal_loader(val, loader, 1)}

    def val_dataloader(self, train_dataloader_fn, val_dataloader_fn) -> None:
        return None


def _check_shape(shape: Sequence[int] | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    shape = tuple(shape)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape) \
            or shape[1] != shape[2]:
        raise ValueError(f'UnrealNAS: image_shape must be (channels, size, size) with positive integers, got '
                         f'{shape!r}.')
    return shape
