"""Split-attention building blocks of the ResNeSt search space, with NNI profiler formulas.

References: Zhang et al., "ResNeSt: Split-Attention Networks", arXiv:2004.08955, 2020 (the split-attention block);
Peng et al., "Pi-NAS: Improving Neural Architecture Search by Reducing Supernet Training Consistency Shift",
ICCV 2021 (the four candidates, and the projection shortcut shared by the candidates of a block).

**Split attention in short.** A grouped 3x3 convolution turns a ``C``-channel input into ``R`` feature-map
*splits* of ``C`` channels each (``R`` = radix), laid out radix-major: channels ``[r*C, (r+1)*C)`` form split ``r``,
and inside a split the ``K`` cardinal groups (cardinality) sit side by side. The splits are summed and globally
pooled into a ``C``-vector, which a two-layer grouped 1x1 MLP (one group per cardinal group) maps to ``R*C``
attention logits. Within each cardinal group and channel, the ``R`` logits are normalised across the splits by a
softmax (the "r-softmax"); with a single split a sigmoid gates the channel instead (an SE-style gate). The output is
the attention-weighted sum of the splits: ``C`` channels, the input's spatial size.
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from nni.nas.profiler.pytorch.flops import FlopsParamsCounterConfig, FlopsResult, count_flops_params, \
    register_flops_formula
from nni.nas.profiler.pytorch.utils import MutableShape, profiler_leaf_module, register_shape_inference_formula

__all__ = ['BlockSpec', 'RESNEST_CANDIDATES', 'SplitAttentionConv', 'SplitAttentionBottleneck', 'CeilAvgPool2d',
           'projection_shortcut', 'group_width', 'attention_channels']

_logger = logging.getLogger(__name__)

EXPANSION = 4
"""Output channels of a bottleneck block = ``EXPANSION * planes`` (ResNet-50)."""


class BlockSpec(NamedTuple):
    """One candidate block: ``radix`` splits, ``cardinality`` groups, ``bottleneck_width`` channels per group at
    ResNet-50's first stage (64 planes)."""
    radix: int
    cardinality: int
    bottleneck_width: int


RESNEST_CANDIDATES: dict[str, BlockSpec] = {
    '1s1x64d': BlockSpec(1, 1, 64),
    '2s1x64d': BlockSpec(2, 1, 64),
    '1s2x42d': BlockSpec(1, 2, 42),
    '2s2x40d': BlockSpec(2, 2, 40),
}
"""The four Pi-NAS candidates, named ``{radix}s{cardinality}x{width}d``, in the paper's choice-index order 0..3."""


def group_width(planes: int, spec: BlockSpec) -> int:
    """Channels ``C`` of a candidate's 3x3 split-attention conv in a stage with ``planes`` planes.

    ResNeSt's ``int(planes * bottleneck_width / 64) * cardinality``. The grouped conv needs every split of every
    cardinal group to get whole input channels, so the per-group width is raised to at least one and rounded up to a
    multiple of the radix; that only changes widths below ResNet-50's (e.g. ``planes=8``: 2s2x40d gets 6 channels
    per group instead of 5).
    """
    exact = max(1, planes * spec.bottleneck_width // 64)
    per_group = -(-exact // spec.radix) * spec.radix
    if per_group != exact:
        _logger.debug('group_width: %d planes, %s: %d channels per group raised to %d (a multiple of radix %d)',
                      planes, spec, exact, per_group, spec.radix)
    return per_group * spec.cardinality


def attention_channels(width: int, spec: BlockSpec, floor: int) -> int:
    """Hidden width of the attention MLP: ResNeSt's ``max(C * radix // 4, floor)`` (floor 32 at full width),
    rounded up to a multiple of the cardinality (the MLP is grouped by cardinal group)."""
    hidden = max(width * spec.radix // 4, floor)
    return -(-hidden // spec.cardinality) * spec.cardinality


class SplitAttentionConv(nn.Module):
    """The split-attention 3x3 convolution of ResNeSt (see the module docstring); stride 1, ``C`` in and out.

    Parameters
    ----------
    channels
        ``C``: input and output channels; a multiple of ``radix * cardinality``.
    spec
        Radix and cardinality of the block.
    hidden
        Hidden width of the attention MLP (:func:`attention_channels`).
    """

    def __init__(self, channels: int, spec: BlockSpec, hidden: int):
        super().__init__()
        if channels % (spec.radix * spec.cardinality) or hidden % spec.cardinality:
            raise ValueError(f'SplitAttentionConv: channels={channels} must be a multiple of radix*cardinality='
                             f'{spec.radix * spec.cardinality} and hidden={hidden} of cardinality; use group_width() '
                             'and attention_channels() to size them.')
        self.channels, self.radix, self.cardinality = channels, spec.radix, spec.cardinality
        splits = channels * spec.radix
        self.conv = nn.Conv2d(channels, splits, 3, 1, 1, groups=spec.cardinality * spec.radix, bias=False)
        self.bn = nn.BatchNorm2d(splits)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, hidden, 1, groups=spec.cardinality)
        self.bn_attention = nn.BatchNorm2d(hidden)
        self.relu_attention = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, splits, 1, groups=spec.cardinality)

    def split_weights(self, logits: torch.Tensor) -> torch.Tensor:
        """Attention logits ``[N, R*C, 1, 1]`` (fc2's layout: cardinal group, then split, then channel) to weights
        ``[N, R, C, 1, 1]`` in the splits' radix-major layout: r-softmax across splits, or a sigmoid when ``R = 1``."""
        n = logits.shape[0]
        if self.radix == 1:
            return torch.sigmoid(logits).view(n, 1, self.channels, 1, 1)
        per_group = logits.view(n, self.cardinality, self.radix, self.channels // self.cardinality)
        weights = torch.softmax(per_group, dim=2).transpose(1, 2)
        return weights.reshape(n, self.radix, self.channels, 1, 1)

    def _normalize_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        # The attention MLP sees one value per channel and image: a single image in training mode cannot be
        # batch-normalised (PyTorch raises), so it uses the running statistics. NNI's profiler runs such a forward.
        if self.training and hidden.shape[0] == 1:
            bn = self.bn_attention
            return F.batch_norm(hidden, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0., bn.eps)
        return self.bn_attention(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        splits = self.relu(self.bn(self.conv(x))).view(n, self.radix, self.channels, h, w)
        pooled = splits.sum(dim=1).mean(dim=(2, 3), keepdim=True)
        logits = self.fc2(self.relu_attention(self._normalize_hidden(self.fc1(pooled))))
        return (self.split_weights(logits) * splits).sum(dim=1)


class CeilAvgPool2d(nn.AvgPool2d):
    """The average pooling of ResNeSt's ``avg_down`` shortcut (``kernel = stride``, ``ceil_mode``, no padding
    counted). Its own class so NNI's profiler gets the ceil-mode output size (its AvgPool2d formula floors)."""

    def __init__(self, stride: int):
        super().__init__(kernel_size=stride, stride=stride, ceil_mode=True, count_include_pad=False)


def projection_shortcut(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """The residual projection of a stage's first block: [average pool] - 1x1 conv - BN (ResNeSt ``avg_down``)."""
    layers: list[nn.Module] = [CeilAvgPool2d(stride)] if stride > 1 else []
    layers += [nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers)


class SplitAttentionBottleneck(nn.Module):
    """The residual branch of a ResNeSt bottleneck: 1x1 - BN - ReLU, split-attention 3x3, [3x3 average pool with the
    block's stride ("avd", after the 3x3 as Pi-NAS's candidates)], 1x1 - BN to ``4 * planes`` channels.

    The shortcut and the final ReLU live in the enclosing choice block, so that its candidates can share one
    projection; ``own_shortcut`` gives a candidate a private projection instead (the no-sharing ablation), added to
    the branch output here.
    """

    def __init__(self, c_in: int, planes: int, stride: int, spec: BlockSpec, attention_floor: int,
                 own_shortcut: nn.Module | None = None):
        super().__init__()
        width = group_width(planes, spec)
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.split_attention = SplitAttentionConv(width, spec, attention_channels(width, spec, attention_floor))
        self.avd = nn.AvgPool2d(3, stride, 1) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(width, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.own_shortcut = own_shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.avd(self.split_attention(self.relu(self.bn1(self.conv1(x)))))
        out = self.bn3(self.conv3(out))
        return out if self.own_shortcut is None else out + self.own_shortcut(x)


# -- NNI profiler: SplitAttentionConv's reshapes and softmax are beyond NNI's shape inference, so it is a leaf whose
# FLOPs/params are NNI's own per-child formulas on the child shapes computed here (element-wise products, the split
# sum and the softmax are not counted, as NNI counts no element-wise tensor ops).

def _split_attention_shape(module: SplitAttentionConv, x: Any) -> MutableShape:
    n, _, h, w = list(x.real_shape)
    return MutableShape(n, module.channels, h, w)


def _split_attention_flops(module: SplitAttentionConv, inputs: tuple, output: MutableShape,
                           config: FlopsParamsCounterConfig) -> FlopsResult:
    n, c, h, w = list(inputs[0])
    splits = MutableShape(n, module.channels * module.radix, h, w)
    pooled = MutableShape(n, module.channels, 1, 1)
    hidden = MutableShape(n, module.fc1.out_channels, 1, 1)
    child_shapes = {
        'conv': ((MutableShape(n, c, h, w),), splits), 'bn': ((splits,), splits), 'relu': ((splits,), splits),
        'fc1': ((pooled,), hidden), 'bn_attention': ((hidden,), hidden), 'relu_attention': ((hidden,), hidden),
        'fc2': ((hidden,), MutableShape(n, module.channels * module.radix, 1, 1)),
    }
    return sum((count_flops_params(name, getattr(module, name), child_shapes, config) for name in child_shapes),
               FlopsResult(0, 0))


def _ceil_pool_shape(module: CeilAvgPool2d, x: Any) -> MutableShape:
    *lead, h, w = list(x.real_shape)
    return MutableShape(*lead, (h + module.stride - 1) // module.stride, (w + module.stride - 1) // module.stride)


for _leaf in (SplitAttentionConv, CeilAvgPool2d):
    profiler_leaf_module(_leaf)
register_shape_inference_formula(SplitAttentionConv, _split_attention_shape)
register_shape_inference_formula(CeilAvgPool2d, _ceil_pool_shape)
register_flops_formula(SplitAttentionConv, _split_attention_flops)
register_flops_formula(CeilAvgPool2d, lambda module, inputs, output: FlopsResult(0, 0))
