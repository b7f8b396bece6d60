"""The Pi-NAS ResNeSt search space: a ResNet-50 layout whose bottlenecks choose among four split-attention blocks.

Reference: Peng et al., "Pi-NAS: Improving Neural Architecture Search by Reducing Supernet Training Consistency
Shift", ICCV 2021, Section 4.1 (search space); the blocks are ResNeSt's (Zhang et al., "ResNeSt: Split-Attention
Networks", 2020), see :mod:`.resnest_blocks`.

**Layout.** Stem, then 4 stages of ``depths`` bottleneck blocks (ResNet-50: ``(3, 4, 6, 3)``, 16 blocks) with
``base_width * 2**stage`` planes and ``4 * planes`` output channels, strides ``1, 2, 2, 2``; global average pooling
and an ``nn.Linear`` classifier. Block ``i`` (counted over all stages from 0) is a :class:`ResNeStChoiceBlock`
whose residual branch is one ``LayerChoice`` labelled ``block{i}`` over :data:`RESNEST_CANDIDATES`
(``1s1x64d``, ``2s1x64d``, ``1s2x42d``, ``2s2x40d``); the space holds ``4 ** num_blocks`` architectures.

**Downsample sharing.** The first block of every stage needs a projection shortcut (average pool, 1x1 conv, BN).
Pi-NAS shares one projection among the four candidates of the block. Here the projection is a child of the choice
block, *outside* the ``LayerChoice``, and is applied once per forward: NNI's one-shot strategies (``RandomOneShot``,
``DARTS``, ...) rewrite only the ``LayerChoice``, so the supernet holds one projection per block and an optimiser
or EMA over ``parameters()`` sees its weights once. ``share_downsample=False`` gives every candidate its own
projection (the paper's Table 7 ablation).

**Full size** (``base_width=64``, 224x224, NNI's profiler counting convolutions and the classifier): every block
``2s1x64d`` is ResNeSt-50, 27.48M parameters and 5.37G multiply-accumulates (ResNeSt reports 27.5M, 5.39G);
Pi-NAS-cls has 27.05M and 5.33G (the paper: 27.1M, 5.38G).

**Architectures** are dicts ``{'block0': '2s2x40d', ...}``; :func:`arch_from_indices` converts the paper's
index lists (e.g. :data:`PINAS_CLS_INDICES`) and :func:`indices_from_arch` back.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from nni.nas.nn.pytorch import LayerChoice, ModelSpace

from .resnest_blocks import EXPANSION, RESNEST_CANDIDATES, SplitAttentionBottleneck, projection_shortcut

__all__ = ['ResNeStSpace', 'ResNeStChoiceBlock', 'RESNEST_CANDIDATES', 'RESNET50_DEPTHS', 'PINAS_CLS_INDICES',
           'PINAS_TRANS_INDICES', 'arch_from_indices', 'indices_from_arch', 'resnest_labels']

_logger = logging.getLogger(__name__)

RESNET50_DEPTHS = (3, 4, 6, 3)
CANDIDATE_NAMES = tuple(RESNEST_CANDIDATES)
PINAS_CLS_INDICES = (3, 0, 1, 3, 2, 3, 1, 2, 0, 3, 2, 1, 3, 0, 3, 2)
"""Pi-NAS-cls, the paper's ImageNet classification model, as choice indices (Pi-NAS's README)."""
PINAS_TRANS_INDICES = (3, 3, 3, 3, 1, 1, 3, 3, 3, 0, 0, 1, 1, 0, 2, 1)
"""Pi-NAS-trans, the paper's transfer-learning model, as choice indices (Pi-NAS's README)."""


class ResNeStChoiceBlock(nn.Module):
    """One searchable bottleneck: ``relu(candidate(x) + shortcut(x))``, the candidate chosen by ``LayerChoice``.

    Attributes
    ----------
    choice
        The ``LayerChoice`` (label ``block{i}``) over the four :class:`SplitAttentionBottleneck` branches.
    downsample
        The projection shortcut shared by all candidates, or ``None`` (identity shortcut, or one projection per
        candidate when sharing is off).
    """

    def __init__(self, index: int, c_in: int, planes: int, stride: int, attention_floor: int, share_downsample: bool):
        super().__init__()
        c_out = planes * EXPANSION
        needs_projection = stride > 1 or c_in != c_out
        self.identity_shortcut = not needs_projection
        shared = needs_projection and share_downsample
        self.downsample = projection_shortcut(c_in, c_out, stride) if shared else None
        candidates = {
            name: SplitAttentionBottleneck(
                c_in, planes, stride, spec, attention_floor,
                own_shortcut=projection_shortcut(c_in, c_out, stride) if needs_projection and not shared else None)
            for name, spec in RESNEST_CANDIDATES.items()}
        self.choice = LayerChoice(candidates, label=f'block{index}')
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.choice(x)
        if self.downsample is not None:
            out = out + self.downsample(x)
        elif self.identity_shortcut:
            out = out + x
        return self.relu(out)


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _stem(kind: str, in_channels: int, base_width: int) -> nn.Sequential:
    """``'cifar'``: 3x3 conv - BN - ReLU at full resolution. ``'imagenet'``: ResNeSt's deep stem, three 3x3 convs
    (the first stride 2; ``base_width // 2`` channels, then ``base_width``), BN, ReLU, 3x3 max-pool stride 2."""
    if kind == 'cifar':
        return nn.Sequential(*_conv_bn_relu(in_channels, base_width, 1))
    stem_width = max(1, base_width // 2)
    return nn.Sequential(*_conv_bn_relu(in_channels, stem_width, 2), *_conv_bn_relu(stem_width, stem_width, 1),
                         *_conv_bn_relu(stem_width, base_width, 1), nn.MaxPool2d(3, 2, 1))


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'ResNeStSpace: {name} must be a positive integer, got {value!r}.')


def _check_arguments(base_width: Any, depths: Any, num_classes: Any, in_channels: Any, stem: Any,
                     share_downsample: Any, attention_floor: Any) -> None:
    for name, value in (('base_width', base_width), ('num_classes', num_classes), ('in_channels', in_channels)):
        _check_positive_int(name, value)
    if attention_floor is not None:
        _check_positive_int('attention_floor', attention_floor)
    if isinstance(depths, (str, bytes)) or not isinstance(depths, Sequence) or len(depths) != 4 or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths):
        raise ValueError(f'ResNeStSpace: depths must be 4 positive integers (blocks per stage; ResNet-50: '
                         f'{RESNET50_DEPTHS}, CPU tests: (1, 1, 1, 1)), got {depths!r}.')
    if stem not in ('cifar', 'imagenet'):
        raise ValueError(f"ResNeStSpace: stem must be 'cifar' (32x32 images, no downsampling) or 'imagenet' (deep "
                         f'stem, /4), got {stem!r}.')
    if not isinstance(share_downsample, bool):
        raise ValueError(f'ResNeStSpace: share_downsample must be True or False, got {share_downsample!r}.')


class ResNeStSpace(ModelSpace):
    """The Pi-NAS search space: ResNet-50 layout, 4 split-attention candidates per bottleneck (4^16 archs).

    See the module docstring for the layout, the labels and downsample sharing.

    Parameters
    ----------
    base_width
        Planes of the first stage (ResNet-50: 64); stage ``s`` has ``base_width * 2**s`` planes and
        ``4 * base_width * 2**s`` output channels. 4..8 gives a CPU-sized supernet.
    depths
        Blocks per stage (ResNet-50: ``(3, 4, 6, 3)``); ``(1, 1, 1, 1)`` for CPU tests.
    num_classes
        Outputs of the final ``nn.Linear`` (:attr:`classifier`).
    in_channels
        Image channels.
    stem
        ``'imagenet'`` (Pi-NAS/ResNeSt deep stem and max-pool: /4) or ``'cifar'`` (one 3x3 conv, for 32x32 images).
    share_downsample
        One projection shortcut per block shared by its candidates (Pi-NAS, default), or one per candidate.
    attention_floor
        Smallest hidden width of the attention MLPs (ResNeSt: 32 at ``base_width=64``). ``None`` scales 32 with
        ``base_width`` (at least 1), so tiny spaces are not dominated by attention weights.

    Attributes
    ----------
    blocks
        The :class:`ResNeStChoiceBlock` s, ``blocks[i]`` labelled ``block{i}``.
    classifier
        The final ``nn.Linear``; ``forward(x) = classifier(global_pooling(features(x)).flatten(1))``.
    num_features
        Channels of :meth:`features` (``32 * base_width``: 2048 for ResNet-50).

    Examples
    --------
    >>> space = ResNeStSpace(base_width=8, depths=(1, 1, 1, 1), stem='cifar')
    >>> net = space.freeze(arch_from_indices(PINAS_CLS_INDICES[:4]))   # a fixed network sharing the space's weights
    """

    def __init__(self, base_width: int = 64, depths: Sequence[int] = RESNET50_DEPTHS, num_classes: int = 1000,
                 in_channels: int = 3, stem: str = 'imagenet', share_downsample: bool = True,
                 attention_floor: int | None = None):
        super().__init__()
        _check_arguments(base_width, depths, num_classes, in_channels, stem, share_downsample, attention_floor)
        floor = attention_floor if attention_floor is not None else max(1, round(32 * base_width / 64))
        self.depths = tuple(depths)
        self.stem = _stem(stem, in_channels, base_width)
        blocks, c_in = [], base_width
        for stage, depth in enumerate(self.depths):
            planes = base_width * 2 ** stage
            for k in range(depth):
                stride = 2 if stage > 0 and k == 0 else 1
                blocks.append(ResNeStChoiceBlock(len(blocks), c_in, planes, stride, floor, share_downsample))
                c_in = planes * EXPANSION
        self.blocks = nn.ModuleList(blocks)
        self.num_features = c_in
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        _logger.debug('ResNeStSpace: %d choice blocks, %d features, attention floor %d, %s downsample',
                      self.num_blocks, c_in, floor, 'shared' if share_downsample else 'per-candidate')

    @property
    def num_blocks(self) -> int:
        """Searchable blocks (16 for ResNet-50's depths)."""
        return len(self.blocks)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output ``[N, num_features, h, w]``, the map the classifier pools (the project's
        ``features`` protocol; the pooled vector is ``global_pooling(features(x)).flatten(1)``)."""
        out = self.stem(x)
        for block in self.blocks:
            out = block(out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pooling(self.features(x)).flatten(1))

    def freeze(self, sample: dict) -> nn.Module:
        """NNI's freeze after checking ``sample``: the chosen blocks are shared with this space (deepcopy to
        decouple)."""
        _check_arch(sample, self.num_blocks, 'ResNeStSpace.freeze')
        return super().freeze(sample)


def resnest_labels(num_blocks: int = sum(RESNET50_DEPTHS)) -> list[str]:
    """The labels ``block0 .. block{num_blocks-1}`` in block order."""
    return [f'block{i}' for i in range(num_blocks)]


def _check_arch(arch: Any, num_blocks: int, who: str) -> None:
    if not isinstance(arch, Mapping):
        raise TypeError(f'{who}: expected an arch dict label -> candidate name, got {type(arch).__name__}.')
    missing = [label for label in resnest_labels(num_blocks) if label not in arch]
    if missing:
        raise ValueError(f'{who}: the arch lacks {len(missing)} of the {num_blocks} block labels (first: '
                         f'{missing[0]!r}); build one with arch_from_indices() or space.random().')
    bad = {label: arch[label] for label in resnest_labels(num_blocks) if arch[label] not in CANDIDATE_NAMES}
    if bad:
        raise ValueError(f'{who}: unknown candidates {bad}; expected names from {CANDIDATE_NAMES}.')


def arch_from_indices(indices: Sequence[int]) -> dict[str, str]:
    """The arch dict of a list of choice indices (0: 1s1x64d, 1: 2s1x64d, 2: 1s2x42d, 3: 2s2x40d), one per block,
    the encoding of Pi-NAS's code and README (e.g. :data:`PINAS_CLS_INDICES`)."""
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence) or not indices:
        raise ValueError(f'arch_from_indices: expected a non-empty sequence of choice indices, got {indices!r}.')
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(CANDIDATE_NAMES)]
    if bad:
        raise ValueError(f'arch_from_indices: indices must be integers in 0..{len(CANDIDATE_NAMES) - 1} '
                         f'({", ".join(f"{k}: {n}" for k, n in enumerate(CANDIDATE_NAMES))}), got {bad}.')
    return {label: CANDIDATE_NAMES[i] for label, i in zip(resnest_labels(len(indices)), indices)}


def indices_from_arch(arch: Mapping[str, str]) -> list[int]:
    """The choice indices of an arch dict (inverse of :func:`arch_from_indices`); blocks ``block0..`` in order."""
    num_blocks = sum(1 for key in arch if isinstance(key, str) and key.startswith('block')) if isinstance(
        arch, Mapping) else 0
    if isinstance(arch, Mapping) and num_blocks == 0:
        raise ValueError(f'indices_from_arch: the arch has no block labels (block0, block1, ...): {dict(arch)!r}.')
    _check_arch(arch, num_blocks, 'indices_from_arch')
    return [CANDIDATE_NAMES.index(arch[label]) for label in resnest_labels(num_blocks)]
