"""The DARTS cell search space, with ``none``, as an NNI 3.0 ``ModelSpace``.

References: Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019; the search-network
variants of Liu et al., "Are Labels Necessary for Neural Architecture Search?" (UnNAS), ECCV 2020 and Zhang et al.,
"Neural Architecture Search with Random Labels" (RLNAS), CVPR 2021.

Why not NNI's hub ``DARTS`` space: it has no ``none`` op (SGAS, RLNAS and DARTS's own genotype derivation need it),
no BatchNorm after pooling (UnNAS and RLNAS search nets have one), a fixed ``affine=True``, convolutions whose
weights ``freeze()`` re-initialises, and a ``FactorizedReduce`` NNI's profiler cannot trace.

**Parameterisation.** Every cell has 14 edges ``node j <- input i`` (nodes 0, 1: the preprocessed cell inputs;
2..5: intermediate nodes; the cell output concatenates nodes 2..5). Each edge is one ``LayerChoice`` over
:data:`DARTS_OPS` labelled ``normal/op_{j}_{i}`` or ``reduce/op_{j}_{i}``, shared by every cell of that type. There
is no ``InputChoice``: an edge set to ``none`` is an unused input, so "two inputs per node" is a property of the
sample (RLNAS's ``check_cand`` encoding). Hence

- DARTS-family strategies (NNI's ``DARTS``, UnNAS, UnrealNAS, SGAS) relax all 14 edges with one alpha per label and
  derive the genotype from the alphas as DARTS does (:func:`genotype_from_alphas`, :func:`arch_from_probs`);
- sampling strategies (SPOS, RLNAS) train only samples in which every node has exactly two non-``none`` inputs:
  draw per edge, then :func:`repair_darts_sample` (:meth:`DartsSpace.repair`); :func:`darts_sample_is_valid` checks.
  A uniform per-edge draw passes the check with probability ~5.6e-8: repair, do not rely on rejection sampling;
- an exported architecture is a plain dict with one op per edge (``none`` on the unused ones); ``freeze`` gives a
  network in which ``none`` edges are skipped, so they cost nothing.

Labels look like the hub's (``normal/op_{node}_{k}``), but there ``k`` is the k-th op of the node, here the input.
"""
from __future__ import annotations

import logging
import random
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nni.mutable import label_scope
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni.nas.profiler.pytorch.flops import FlopsResult, register_flops_formula
from nni.nas.profiler.pytorch.utils import MutableShape, profiler_leaf_module, register_shape_inference_formula

from .nasbench201 import CellDAG, ReLUConvBN

__all__ = ['DartsSpace', 'DARTS_OPS', 'DARTS_EDGES', 'DARTS_LABELS', 'CELL_TYPES', 'Zero', 'FactorizedReduce',
           'candidate_ops', 'genotype_from_arch', 'arch_from_genotype', 'genotype_from_alphas', 'arch_from_probs',
           'count_skip_connections', 'darts_sample_is_valid', 'repair_darts_sample', 'random_darts_sample']

_logger = logging.getLogger(__name__)

DARTS_OPS = ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect',
             'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')
"""Candidate ops of every edge, in DARTS's ``PRIMITIVES`` order (UnNAS's and RLNAS's too)."""
_REAL_OPS = DARTS_OPS[1:]
CELL_TYPES = ('normal', 'reduce')
NODES = (2, 3, 4, 5)
DARTS_EDGES = tuple((dst, src) for dst in NODES for src in range(dst))
"""``(node, input)`` of the 14 edges, in DARTS's edge order (edge index of ``i -> j`` is ``i + sum(range(2, j))``)."""
DARTS_LABELS = tuple(f'{cell}/op_{dst}_{src}' for cell in CELL_TYPES for dst, src in DARTS_EDGES)
"""The 28 labels of the space, in the order of ``DartsSpace.simplify()``."""


# -- ops ---------------------------------------------------------------------------------------------------------

class Zero(nn.Module):
    """The ``none`` op: zeros shaped like the op's output (spatially strided in reduction edges)."""

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x if self.stride == 1 else x[:, :, ::self.stride, ::self.stride]).mul(0.)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two 1x1 stride-2 convolutions, one shifted by a pixel, concatenated, then BN."""

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        if c_out % 2:
            raise ValueError(f'FactorizedReduce needs an even number of output channels, got {c_out}.')
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]  # the padding keeps odd sizes aligned (UnNAS's version)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def _sep_conv(c: int, k: int, stride: int, affine: bool) -> nn.Sequential:
    """Two stacked ReLU - depthwise kxk - pointwise - BN units (the first one strided)."""
    layers: list[nn.Module] = []
    for s in (stride, 1):
        layers += [nn.ReLU(inplace=False), nn.Conv2d(c, c, k, s, k // 2, groups=c, bias=False),
                   nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=affine)]
    return nn.Sequential(*layers)


def _dil_conv(c: int, k: int, stride: int, affine: bool) -> nn.Sequential:
    """ReLU - depthwise kxk with dilation 2 - pointwise - BN."""
    return nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(c, c, k, stride, k - 1, dilation=2, groups=c, bias=False),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=affine))


def _pool(kind: str, c: int, stride: int, affine: bool, pool_bn: bool) -> nn.Module:
    pool = nn.MaxPool2d(3, stride, 1) if kind == 'max' else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if not pool_bn:
        return pool
    return nn.Sequential(OrderedDict(pool=pool, bn=nn.BatchNorm2d(c, affine=affine)))


def candidate_ops(c: int, stride: int, affine: bool, pool_bn: bool = True) -> dict[str, nn.Module]:
    """The 8 candidates of one edge with ``c`` channels, keyed by :data:`DARTS_OPS` names."""
    return {
        'none': Zero(stride),
        'max_pool_3x3': _pool('max', c, stride, affine, pool_bn),
        'avg_pool_3x3': _pool('avg', c, stride, affine, pool_bn),
        'skip_connect': nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine),
        'sep_conv_3x3': _sep_conv(c, 3, stride, affine),
        'sep_conv_5x5': _sep_conv(c, 5, stride, affine),
        'dil_conv_3x3': _dil_conv(c, 3, stride, affine),
        'dil_conv_5x5': _dil_conv(c, 5, stride, affine),
    }


# NNI's profiler cannot trace the padding inside FactorizedReduce, so both custom ops are profiler leaves with their
# own shape and FLOPs formulas (NNI's conventions for conv/BN/ReLU; the tests check them against a direct count).
def _strided_shape(shape: MutableShape, channels: Any, stride: int) -> MutableShape:
    *lead, _, h, w = list(shape)
    return MutableShape(*lead, channels, (h + stride - 1) // stride, (w + stride - 1) // stride)


def _factorized_reduce_flops(module: FactorizedReduce, inputs: tuple, output: MutableShape,
                             count_activation: bool = True, count_normalization: bool = True) -> FlopsResult:
    out_size = output[1:].numel()
    flops = out_size * module.conv_1.in_channels + (inputs[0][1:].numel() if count_activation else 0)
    params = module.conv_1.weight.numel() + module.conv_2.weight.numel()
    if count_normalization:
        flops += 2 * (1 + module.bn.affine) * out_size
        params += 2 * module.bn.num_features * module.bn.affine
    return FlopsResult(flops, params)


for _leaf in (Zero, FactorizedReduce):
    profiler_leaf_module(_leaf)
register_shape_inference_formula(Zero, lambda m, x: _strided_shape(x.real_shape, x.real_shape[1], m.stride))
register_shape_inference_formula(
    FactorizedReduce, lambda m, x: _strided_shape(x.real_shape, m.bn.num_features, 2))
register_flops_formula(Zero, lambda m, inputs, output: FlopsResult(0, 0))
register_flops_formula(FactorizedReduce, _factorized_reduce_flops)


# -- network -----------------------------------------------------------------------------------------------------

class DartsCell(nn.Module):
    """One normal or reduction cell: 2 preprocessed inputs, 4 intermediate nodes, output = concat of nodes 2..5."""

    def __init__(self, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool, affine: bool,
                 pool_bn: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(c_pp, c, affine) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, affine)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, affine)
        # NNI forbids `/` in a label: the cell type comes from a label scope, giving `normal/op_3_1` etc.
        with label_scope(CELL_TYPES[reduction]):
            self.edges = nn.ModuleDict({
                f'{dst}_{src}': LayerChoice(candidate_ops(c, 2 if reduction and src < 2 else 1, affine, pool_bn),
                                            label=f'op_{dst}_{src}')
                for dst, src in DARTS_EDGES})

    def _node(self, dst: int, nodes: list[torch.Tensor]) -> torch.Tensor:
        edges = [(self.edges[f'{dst}_{src}'], nodes[src]) for src in range(dst)]
        # A frozen network skips `none` edges (they cost nothing); a node without any real input stays zero.
        live = [(op, x) for op, x in edges if not isinstance(op, Zero)] or edges[:1]
        total = live[0][0](live[0][1])
        for op, x in live[1:]:
            total = total + op(x)  # a running sum keeps NNI's profiler formulas sufficient
        return total

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        nodes = [self.preprocess0(s0), self.preprocess1(s1)]
        for dst in NODES:
            nodes.append(self._node(dst, nodes))
        return torch.cat(nodes[2:], dim=1)


def _conv_bn(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)]


def _check_arguments(width: Any, num_cells: Any, num_classes: Any, in_channels: Any, stem: Any, affine: Any,
                     stem_multiplier: Any, pool_bn: Any) -> None:
    for name, value in (('width', width), ('num_cells', num_cells), ('num_classes', num_classes),
                        ('in_channels', in_channels), ('stem_multiplier', stem_multiplier)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'DartsSpace: {name} must be a positive integer, got {value!r}.')
    if num_cells < 3:
        raise ValueError(f'DartsSpace: num_cells must be at least 3 (reductions sit at num_cells//3 and '
                         f'2*num_cells//3, so fewer cells leave no normal cell), got {num_cells}.')
    if stem not in ('cifar', 'imagenet'):
        raise ValueError(f"DartsSpace: stem must be 'cifar' or 'imagenet', got {stem!r}.")
    if stem == 'imagenet' and width % 2:
        raise ValueError(f"DartsSpace: the 'imagenet' stem needs an even width (its first conv has width//2 "
                         f"channels, the first cell a FactorizedReduce), got {width}.")
    for name, value in (('affine', affine), ('pool_bn', pool_bn)):
        if not isinstance(value, bool):
            raise ValueError(f'DartsSpace: {name} must be True or False, got {value!r}.')


class DartsSpace(ModelSpace):
    """The DARTS cell space (8 ops incl. ``none`` on 14 edges, normal and reduction cell) as an NNI ``ModelSpace``.

    See the module docstring for the label scheme and how DARTS- and sampling-based strategies use it.

    Parameters
    ----------
    width
        Channels ``C`` of the first stage's ops (DARTS search: 16); doubled at each reduction cell.
    num_cells
        Cells in total (DARTS search: 8; at least 3); reductions at ``num_cells//3`` and ``2*num_cells//3``.
    num_classes
        Outputs of the final ``nn.Linear`` (:attr:`classifier`).
    in_channels
        Image channels (1 for colorization's L channel).
    stem
        ``'cifar'``: one 3x3 conv to ``stem_multiplier * C``; ``'imagenet'``: UnNAS's/DARTS's large-image stem, three
        stride-2 convs (``stem0``: two, ``stem1``: one), after which the first cell reduces its first input.
    affine
        Affine BatchNorm in the cells (ops and preprocessing): ``False`` as in DARTS/UnNAS/SGAS search networks,
        ``True`` as in RLNAS's DARTS supernet and in retraining.
    stem_multiplier
        Width multiplier of the CIFAR stem (3); the ImageNet stem ends at ``C`` channels.
    pool_bn
        BatchNorm after pooling ops (UnNAS/RLNAS/DARTS search nets); ``False`` gives DARTS's evaluation-network pools.

    Attributes
    ----------
    classifier
        The final ``nn.Linear``; ``forward(x) = classifier(global_pool(features(x)))``.
    num_features
        Channels of :meth:`features` (``4 * 4 * C``).

    Examples
    --------
    >>> space = DartsSpace(width=8, num_cells=5)
    >>> net = space.freeze(random_darts_sample(random.Random(0)))   # a fixed network; `none` edges are skipped
    """

    angle_policy_defaults = {'pool': 'const3d', 'skip': 'identity'}
    """RLNAS's DARTS angle (methods.md 1.4): pool = constant ``1/9`` ``[C, 3, 3]`` plus its BN, skip = ``eye(C)`` at
    stride 1 (the ``FactorizedReduce`` weights at stride 2 enter as parameters). Read by RLNAS when it is given no
    :class:`~nni_labelfree.metrics.angle.AnglePolicy`."""

    def __init__(self, width: int = 16, num_cells: int = 8, num_classes: int = 10, in_channels: int = 3,
                 stem: str = 'cifar', affine: bool = False, stem_multiplier: int = 3, pool_bn: bool = True):
        super().__init__()
        _check_arguments(width, num_cells, num_classes, in_channels, stem, affine, stem_multiplier, pool_bn)
        self.stem_type = stem
        if stem == 'cifar':
            self.stem = nn.Sequential(*_conv_bn(in_channels, stem_multiplier * width, 1))
            c_pp = c_p = stem_multiplier * width
        else:
            self.stem0 = nn.Sequential(*_conv_bn(in_channels, width // 2, 2), nn.ReLU(inplace=True),
                                       *_conv_bn(width // 2, width, 2))
            self.stem1 = nn.Sequential(nn.ReLU(inplace=True), *_conv_bn(width, width, 2))
            c_pp = c_p = width
        c, reduction_prev = width, stem == 'imagenet'
        self.cells = nn.ModuleList()
        for index in range(num_cells):
            reduction = index in (num_cells // 3, 2 * num_cells // 3)
            c = 2 * c if reduction else c
            self.cells.append(DartsCell(c_pp, c_p, c, reduction, reduction_prev, affine, pool_bn))
            c_pp, c_p, reduction_prev = c_p, len(NODES) * c, reduction
        self.num_features = c_p
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last cell's output ``[N, num_features, h, w]``, the spatial map the classifier pools."""
        if self.stem_type == 'cifar':
            s0 = s1 = self.stem(x)
        else:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return s1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pooling(self.features(x)).flatten(1))

    def cell_dags(self) -> list[CellDAG]:
        """Per cell, its 14 edges; paths run from both inputs to every intermediate node (30 per cell, RLNAS)."""
        dags = []
        for index, cell in enumerate(self.cells):
            kind = CELL_TYPES[cell.reduction]
            edges = tuple((src, dst, f'{kind}/op_{dst}_{src}', f'cells.{index}.edges.{dst}_{src}')
                          for dst, src in DARTS_EDGES)
            dags.append(CellDAG(edges=edges, sources=(0, 1), sinks=NODES))
        return dags

    def freeze(self, sample: dict) -> nn.Module:
        """NNI's freeze after checking ``sample``: the chosen ops are shared with this space (deepcopy to decouple)."""
        _check_sample(sample, 'DartsSpace.freeze')
        empty = [f'{cell}/{dst}' for cell in CELL_TYPES for dst in NODES
                 if all(sample[label] == 'none' for label in _node_labels(cell, dst))]
        if empty:
            _logger.warning('Nodes %s have only `none` inputs: they stay zero in the frozen network.', empty)
        return super().freeze(sample)

    @staticmethod
    def sample_filter(sample: Mapping[str, str]) -> bool:
        """See :func:`darts_sample_is_valid`."""
        return darts_sample_is_valid(sample)

    @staticmethod
    def repair(sample: Mapping[str, str], rng: random.Random) -> dict:
        """See :func:`repair_darts_sample`."""
        return repair_darts_sample(sample, rng)

    @staticmethod
    def arch_from_probs(probs: Mapping[str, Any]) -> dict:
        """See :func:`arch_from_probs` (the hook UnNAS's export looks for)."""
        return arch_from_probs(probs)


# -- samples: validity and RLNAS's repair -------------------------------------------------------------------------

def _check_sample(sample: Mapping[str, Any], who: str) -> None:
    if not isinstance(sample, Mapping):
        raise TypeError(f'{who}: expected an arch dict label -> op, got {type(sample).__name__}.')
    missing = [label for label in DARTS_LABELS if label not in sample]
    if missing:
        raise ValueError(f'{who}: the arch lacks {len(missing)} of the 28 DARTS labels (first: {missing[0]!r}). '
                         'Expected one op per edge, `none` on unused edges; build it with arch_from_genotype().')
    bad = {label: sample[label] for label in DARTS_LABELS if sample[label] not in DARTS_OPS}
    if bad:
        raise ValueError(f'{who}: unknown ops {bad}; expected values from {DARTS_OPS}.')


def _node_labels(cell: str, dst: int) -> list[str]:
    return [f'{cell}/op_{dst}_{src}' for src in range(dst)]


def darts_sample_is_valid(sample: Mapping[str, str]) -> bool:
    """True iff every intermediate node of both cell types has exactly 2 non-``none`` incoming edges.

    That is the topology of a DARTS genotype. Raises ``ValueError`` if labels are missing or ops unknown.
    """
    _check_sample(sample, 'darts_sample_is_valid')
    return all(sum(sample[label] != 'none' for label in _node_labels(cell, dst)) == 2
               for cell in CELL_TYPES for dst in NODES)


def repair_darts_sample(sample: Mapping[str, str], rng: random.Random) -> dict:
    """Project a sample onto the valid ones, as RLNAS's ``check_cand``: exactly 2 real inputs per node.

    Per node: surplus non-``none`` edges are set to ``none`` at random; if fewer than 2 are real, random ``none``
    edges get a random non-``none`` op. Valid samples come back unchanged (``rng`` untouched); other keys are kept.
    The signature fits :func:`nni_labelfree.selection.evolve`'s ``repair=``.
    """
    if not isinstance(rng, random.Random):
        raise TypeError(f'repair_darts_sample needs a random.Random (e.g. random.Random(seed)), got '
                        f'{type(rng).__name__}.')
    _check_sample(sample, 'repair_darts_sample')
    out = dict(sample)
    for cell in CELL_TYPES:
        for dst in NODES:
            labels = _node_labels(cell, dst)
            real = [label for label in labels if out[label] != 'none']
            if len(real) > 2:
                for label in rng.sample(real, len(real) - 2):
                    out[label] = 'none'
            elif len(real) < 2:
                for label in rng.sample([lab for lab in labels if lab not in real], 2 - len(real)):
                    out[label] = rng.choice(_REAL_OPS)
    return out


def random_darts_sample(rng: random.Random) -> dict:
    """A valid sample as RLNAS draws it: a uniform op per edge, then :func:`repair_darts_sample`."""
    return repair_darts_sample({label: rng.choice(DARTS_OPS) for label in DARTS_LABELS}, rng)


# -- genotypes -----------------------------------------------------------------------------------------------------

def genotype_from_arch(arch: Mapping[str, str]) -> dict:
    """The DARTS genotype of a valid arch dict.

    Returns ``{'normal': [(op, input), ...], 'normal_concat': [2, 3, 4, 5], 'reduce': [...], 'reduce_concat': [...]}``
    with two pairs per node, nodes in order, inputs ascending within a node.
    """
    _check_sample(arch, 'genotype_from_arch')
    genotype: dict = {}
    for cell in CELL_TYPES:
        pairs = []
        for dst in NODES:
            real = [(arch[label], src) for src, label in enumerate(_node_labels(cell, dst)) if arch[label] != 'none']
            if len(real) != 2:
                raise ValueError(f'genotype_from_arch: node {dst} of the {cell} cell has {len(real)} non-none inputs '
                                 f'{real}; a DARTS genotype needs exactly 2. Fix the arch with repair_darts_sample(), '
                                 'or derive it from alphas with genotype_from_alphas().')
            pairs += real
        genotype[cell], genotype[f'{cell}_concat'] = pairs, list(NODES)
    return genotype


def _genotype_field(genotype: Any, name: str) -> Any:
    value = genotype.get(name) if isinstance(genotype, Mapping) else getattr(genotype, name, None)
    if value is None and not name.endswith('_concat'):
        raise ValueError(f'Genotype lacks {name!r}; expected a dict or DARTS Genotype with normal/reduce pair lists.')
    return value


def arch_from_genotype(genotype: Any) -> dict:
    """The arch dict (one op per edge, ``none`` elsewhere) of a DARTS genotype (dict or DARTS ``Genotype``)."""
    arch = {label: 'none' for label in DARTS_LABELS}
    for cell in CELL_TYPES:
        pairs = [tuple(pair) for pair in _genotype_field(genotype, cell)]
        concat = _genotype_field(genotype, f'{cell}_concat')
        if concat is not None and sorted(concat) != list(NODES):
            raise ValueError(f'{cell}_concat={list(concat)}: this space concatenates all of nodes {list(NODES)}.')
        if len(pairs) != 2 * len(NODES) or any(len(pair) != 2 for pair in pairs):
            raise ValueError(f'Genotype {cell!r} must hold 8 (op, input) pairs, 2 per node; got {pairs}.')
        for k, (op, src) in enumerate(pairs):
            dst = NODES[k // 2]
            if op not in _REAL_OPS or isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < dst:
                raise ValueError(f'Genotype {cell!r}: pair {(op, src)} for node {dst} needs an op from {_REAL_OPS} '
                                 f'and an input index in 0..{dst - 1}.')
            label = f'{cell}/op_{dst}_{src}'
            if arch[label] != 'none':
                raise ValueError(f'Genotype {cell!r}: node {dst} takes input {src} twice; this space has one op '
                                 'per edge.')
            arch[label] = op
    return arch


def _edge_weights(value: Any, normalize: bool, label: str) -> np.ndarray:
    if isinstance(value, Mapping):
        value = [value[op] for op in DARTS_OPS]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    weights = np.asarray(value, dtype=float).reshape(-1)
    if weights.shape != (len(DARTS_OPS),) or not np.all(np.isfinite(weights)):
        raise ValueError(f'{label}: expected {len(DARTS_OPS)} finite weights in the order {DARTS_OPS}, got {value!r}.')
    if normalize:
        weights = np.exp(weights - weights.max())
        weights = weights / weights.sum()
    return weights


def genotype_from_alphas(alphas: Mapping[str, Any], *, normalize: bool = True) -> dict:
    """DARTS's genotype derivation: per node the 2 inputs whose strongest non-``none`` op weighs most.

    Parameters
    ----------
    alphas
        Label -> 8 weights (tensor, array or sequence in :data:`DARTS_OPS` order, or a mapping op -> weight).
    normalize
        Softmax each edge's weights first, as DARTS ranks ``softmax(alpha)``: right for raw alphas. Pass ``False``
        for probabilities (NNI's ``export_probs()``).

    Each kept edge takes its best non-``none`` op; ties go to the lower input index and the earlier op.
    """
    missing = [label for label in DARTS_LABELS if label not in alphas]
    if missing:
        raise ValueError(f'genotype_from_alphas: no weights for {len(missing)} labels (first: {missing[0]!r}).')
    genotype: dict = {}
    for cell in CELL_TYPES:
        pairs = []
        for dst in NODES:
            scored = []
            for src, label in enumerate(_node_labels(cell, dst)):
                real = _edge_weights(alphas[label], normalize, label)[1:]
                scored.append((-real.max(), src, _REAL_OPS[int(np.argmax(real))]))
            pairs += sorted(((op, src) for _, src, op in sorted(scored)[:2]), key=lambda pair: pair[1])
        genotype[cell], genotype[f'{cell}_concat'] = pairs, list(NODES)
    return genotype


def arch_from_probs(probs: Mapping[str, Any]) -> dict:
    """The DARTS-derived arch of NNI's ``export_probs()`` (label -> {op: probability}); UnNAS exports with it."""
    return arch_from_genotype(genotype_from_alphas(probs, normalize=False))


def count_skip_connections(genotype: Any) -> int:
    """``skip_connect`` ops in the normal cell (UnNAS/UnrealNAS collapse analysis) of a genotype or an arch dict."""
    if isinstance(genotype, Mapping) and 'normal' not in genotype:
        return sum(genotype.get(f'normal/op_{dst}_{src}') == 'skip_connect' for dst, src in DARTS_EDGES)
    return sum(op == 'skip_connect' for op, _ in _genotype_field(genotype, 'normal'))
