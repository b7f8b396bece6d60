"""The MobileNet-like (ProxylessNAS) search space of RLNAS, as an NNI 3.0 ``ModelSpace``.

References: Cai, Zhu & Han, "ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware", ICLR 2019
(the layout); Guo et al., "Single Path One-Shot Neural Architecture Search with Uniform Sampling", ECCV 2020 and
Zhang et al., "Neural Architecture Search with Random Labels" (RLNAS), CVPR 2021 (the search space as RLNAS uses it:
21 choice blocks, each with 6 MBConv candidates, kernel {3, 5, 7} x expansion {3, 6}, plus skip).

**Layout** (``stem='imagenet'``, widths at ``width_mult=1``: RLNAS's supernet, i.e. ProxylessNAS-GPU's widths)::

    stem: 3x3 conv stride 2 -> 40, BN, ReLU6
    fixed MBConv, expansion 1: depthwise 3x3, BN, ReLU6, 1x1 -> 24, BN
    stage 1..6: widths 32, 56, 112, 128, 256, 432; strides 2, 2, 2, 1, 2, 1; 4, 4, 4, 4, 4, 1 choice blocks
    final 1x1 conv -> 1728, BN, ReLU6; global average pooling; nn.Linear classifier

A 224x224 image ends at 7x7. ``stem='cifar'`` (32x32 images) makes the stem and stage 1 stride 1 and ends at 4x4.

**Choice blocks.** Block ``b`` of stage ``s`` is one ``LayerChoice`` labelled ``s{s}_b{b}`` over
:data:`MBCONV_OPS` (``k3_e3``, ``k3_e6``, ..., ``k7_e6``: an inverted residual with that depthwise kernel and
expansion, with an identity shortcut when its stride is 1 and its input and output widths match) and ``skip`` (the
block is the identity). The first block of every stage changes the width (and, in stride-2 stages, the resolution),
so an identity cannot replace it: ProxylessNAS gives those blocks no ``zero`` op (its identity-shortcut-only
candidate) and RLNAS never samples skip at its layers 0, 4, 8, 12, 16, 20. Here those 6 blocks simply have the 6
MBConv candidates; the other 15 have 7. Every sample is therefore valid: no filter or repair is needed, and uniform
single-path sampling draws uniformly from each block's own candidates, as RLNAS does.

**Angle** (RLNAS's MobileNet vector, methods.md 1.4): the space has no cell DAG, so RLNAS uses the per-block
:class:`~nni_labelfree.metrics.angle.ChoiceAngleScorer`: the fixed layers plus each chosen candidate's parameters;
``skip`` is the identity surrogate (:attr:`MobileNetSpace.angle_policy_defaults`). RLNAS adds ``eye(out, in)`` =
``eye(C)``; the scorer sizes its surrogate from the block's largest dense conv, ``eye(6C, C)`` or ``eye(3C, C)``,
which holds the same ``C`` ones and only extra zeros, so dot products and norms, hence the angle, are identical.

Why not NNI's hub ``ProxylessNAS``: it expresses depth as a ``Repeat`` over 1..4 blocks per stage rather than a skip
candidate per block (so the space is not RLNAS's 21 x 7 one), uses the mobile widths (32, 16, ..., 1280) and rounds
the expanded width to multiples of 8, and has no CIFAR stem or ``features(x)``.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from nni.nas.nn.pytorch import LayerChoice, ModelSpace

__all__ = ['MobileNetSpace', 'MBConv', 'MBCONV_OPS', 'SKIP', 'RLNAS_WIDTHS', 'STAGE_DEPTHS', 'block_candidates',
           'make_divisible', 'rlnas_encoding']

_logger = logging.getLogger(__name__)

MBCONV_OPS = ('k3_e3', 'k3_e6', 'k5_e3', 'k5_e6', 'k7_e3', 'k7_e6')
"""MBConv candidates ``k{kernel}_e{expansion}``, in RLNAS's ``blocks_keys`` order (its op ids 0..5)."""
SKIP = 'skip'
"""The identity candidate of blocks that keep resolution and width (RLNAS's op id -1)."""
RLNAS_WIDTHS = (40, 24, 32, 56, 112, 128, 256, 432, 1728)
"""Stem, fixed first MBConv, the 6 stages and the final 1x1 conv (RLNAS's supernet; ProxylessNAS-GPU's widths)."""
STAGE_DEPTHS = (4, 4, 4, 4, 4, 1)
"""Choice blocks per stage (21 in all)."""
_STAGE_STRIDES = {'imagenet': (2, 2, 2, 1, 2, 1), 'cifar': (1, 2, 2, 1, 2, 1)}
_STEM_STRIDE = {'imagenet': 2, 'cifar': 1}


def make_divisible(value: float, divisor: int) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never more than 10% below it.

    The usual MobileNet channel rounding (TensorFlow's ``_make_divisible``), used to scale widths.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
             activation: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    return layers + [nn.ReLU6(inplace=True)] if activation else layers


class MBConv(nn.Module):
    """Inverted residual (MobileNetV2): 1x1 expansion, depthwise ``kernel`` x ``kernel``, linear 1x1 projection.

    Expansion 1 drops the expansion conv (ProxylessNAS's fixed first block). The identity shortcut is added when the
    block keeps both resolution and width.

    Parameters
    ----------
    c_in, c_out
        Input and output channels.
    kernel
        Depthwise kernel size (odd).
    expansion
        Hidden width = ``expansion * c_in``.
    stride
        Stride of the depthwise conv (1 or 2).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, expansion: int, stride: int):
        super().__init__()
        hidden = c_in * expansion
        expand = _conv_bn(c_in, hidden, 1) if expansion != 1 else []
        self.conv = nn.Sequential(*expand, *_conv_bn(hidden, hidden, kernel, stride, groups=hidden),
                                  *_conv_bn(hidden, c_out, 1, activation=False))
        self.use_shortcut = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_shortcut else out


def block_candidates(c_in: int, c_out: int, stride: int, allow_skip: bool) -> dict[str, nn.Module]:
    """The candidates of one choice block: the 6 MBConvs, plus ``skip`` when ``allow_skip``."""
    ops: dict[str, nn.Module] = {}
    for name in MBCONV_OPS:
        kernel, expansion = (int(part[1:]) for part in name.split('_'))
        ops[name] = MBConv(c_in, c_out, kernel, expansion, stride)
    if allow_skip:
        if stride != 1 or c_in != c_out:
            raise ValueError(f'A skip candidate needs stride 1 and equal widths, got {c_in}->{c_out}, stride {stride}.')
        ops[SKIP] = nn.Identity()
    return ops


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'MobileNetSpace: {name} must be a positive integer, got {value!r}.')


def _check_arguments(width_mult: Any, stage_depths: Any, num_classes: Any, in_channels: Any, stem: Any,
                     channel_divisor: Any, base_widths: Any) -> None:
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
        raise ValueError(f'MobileNetSpace: width_mult must be a positive number (1.0: RLNAS widths), got '
                         f'{width_mult!r}.')
    if not isinstance(stage_depths, Sequence) or len(stage_depths) != len(STAGE_DEPTHS):
        raise ValueError(f'MobileNetSpace: stage_depths must list the choice blocks of each of the '
                         f'{len(STAGE_DEPTHS)} stages, e.g. {STAGE_DEPTHS} (RLNAS), got {stage_depths!r}.')
    for depth in stage_depths:
        _check_positive_int('every stage depth', depth)
    for name, value in (('num_classes', num_classes), ('in_channels', in_channels),
                        ('channel_divisor', channel_divisor)):
        _check_positive_int(name, value)
    if stem not in _STAGE_STRIDES:
        raise ValueError(f"MobileNetSpace: stem must be 'imagenet' (stride-2 stem, 224 px) or 'cifar' (32 px), "
                         f'got {stem!r}.')
    if not isinstance(base_widths, Sequence) or len(base_widths) != len(RLNAS_WIDTHS):
        raise ValueError(f'MobileNetSpace: base_widths must hold {len(RLNAS_WIDTHS)} widths (stem, first block, 6 '
                         f'stages, final conv), e.g. {RLNAS_WIDTHS}, got {base_widths!r}.')
    for width in base_widths:
        _check_positive_int('every base width', width)


class MobileNetSpace(ModelSpace):
    """RLNAS's MobileNet-like (ProxylessNAS) space: 21 choice blocks of 6 MBConvs plus skip, as an NNI ``ModelSpace``.

    See the module docstring for the layout, the labels and which blocks may skip.

    Parameters
    ----------
    width_mult
        Scales every width of ``base_widths`` (rounded by :func:`make_divisible` to ``channel_divisor``).
    stage_depths
        Choice blocks in each of the 6 stages (RLNAS: ``(4, 4, 4, 4, 4, 1)``); the depth scaling for small runs.
    num_classes
        Outputs of the final ``nn.Linear`` (:attr:`classifier`).
    in_channels
        Image channels.
    stem
        ``'imagenet'``: stride-2 stem, 32x downsampling (224 px -> 7x7); ``'cifar'``: stride-1 stem and stage 1,
        8x downsampling (32 px -> 4x4).
    channel_divisor
        Scaled widths are multiples of it (8 as in MobileNets; smaller values allow tiny CPU supernets).
    base_widths
        Widths of the stem, the fixed first block, the 6 stages and the final 1x1 conv at ``width_mult=1``.

    Attributes
    ----------
    classifier
        The final ``nn.Linear``; ``forward(x) = classifier(global_pool(features(x)))``.
    num_features
        Channels of :meth:`features` (the final 1x1 conv's width).
    widths
        The scaled widths actually built, in the order of ``base_widths``.

    Examples
    --------
    >>> space = MobileNetSpace(width_mult=0.25, stage_depths=(2, 2, 1, 1, 1, 1), stem='cifar', channel_divisor=4)
    >>> net = space.freeze({label: 'k3_e3' for label in space.block_choices})
    """

    angle_policy_defaults = {'skip': 'identity'}
    """RLNAS's MobileNet angle (methods.md 1.4): skip = ``eye(out, in)``. Read by RLNAS when given no policy."""

    def __init__(self, width_mult: float = 1.0, stage_depths: Sequence[int] = STAGE_DEPTHS, num_classes: int = 1000,
                 in_channels: int = 3, stem: str = 'imagenet', channel_divisor: int = 8,
                 base_widths: Sequence[int] = RLNAS_WIDTHS):
        super().__init__()
        _check_arguments(width_mult, stage_depths, num_classes, in_channels, stem, channel_divisor, base_widths)
        self.widths = tuple(make_divisible(w * width_mult, channel_divisor) for w in base_widths)
        self.stage_depths = tuple(stage_depths)
        stem_width, first_width, *stage_widths, last_width = self.widths
        self.stem = nn.Sequential(*_conv_bn(in_channels, stem_width, 3, _STEM_STRIDE[stem]))
        self.first_block = MBConv(stem_width, first_width, 3, 1, 1)
        self.block_choices: dict[str, list[str]] = {}
        blocks: list[nn.Module] = []
        c_in = first_width
        for stage, (c_out, depth, stride) in enumerate(zip(stage_widths, stage_depths, _STAGE_STRIDES[stem]), 1):
            for index in range(depth):
                first = index == 0
                label = f's{stage}_b{index}'
                ops = block_candidates(c_in, c_out, stride if first else 1, allow_skip=not first)
                blocks.append(LayerChoice(ops, label=label))
                self.block_choices[label] = list(ops)
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.final_conv = nn.Sequential(*_conv_bn(c_in, last_width, 1))
        self.num_features = last_width
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The final 1x1 conv's output ``[N, num_features, h, w]``, the spatial map the classifier pools."""
        return self.final_conv(self.blocks(self.first_block(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pooling(self.features(x)).flatten(1))

    def freeze(self, sample: Mapping[str, str]) -> nn.Module:
        """NNI's freeze after checking ``sample``; the chosen blocks stay shared with the space (deepcopy them)."""
        _check_sample(sample, self.block_choices, 'MobileNetSpace.freeze')
        return super().freeze(dict(sample))


def _check_sample(sample: Any, choices: dict[str, list[str]], who: str) -> None:
    if not isinstance(sample, Mapping):
        raise TypeError(f'{who}: expected an arch dict label -> candidate, got {type(sample).__name__}.')
    missing = [label for label in choices if label not in sample]
    if missing:
        raise ValueError(f'{who}: the arch lacks {len(missing)} of the {len(choices)} block labels (first: '
                         f'{missing[0]!r}); expected one candidate per block, labels {list(choices)}.')
    bad = {label: sample[label] for label in choices if sample[label] not in choices[label]}
    if bad:
        raise ValueError(f'{who}: candidates {bad} are not available in those blocks; expected values from '
                         f'{ {label: choices[label] for label in bad} } (the first block of a stage cannot skip).')


def rlnas_encoding(arch: Mapping[str, str], space: MobileNetSpace) -> list[int]:
    """``arch`` as RLNAS's MobileNet ``cand``: per block the op id 0..5 in :data:`MBCONV_OPS` order, -1 for skip."""
    _check_sample(arch, space.block_choices, 'rlnas_encoding')
    return [-1 if arch[label] == SKIP else MBCONV_OPS.index(arch[label]) for label in space.block_choices]
