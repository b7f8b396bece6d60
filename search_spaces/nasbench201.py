"""NAS-Bench-201 as an NNI 3.0 ``ModelSpace``, in the form RLNAS searches it.

Reference: Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture Search",
ICLR 2020; the RLNAS search cell follows Zhang et al., "Neural Architecture Search with Random Labels", CVPR 2021.

Why our own space and not NNI's hub ``NasBench201``:

- RLNAS search cells use BatchNorm *without* affine parameters inside candidate ops (the angle then sees only
  conv weights); the hub space hard-codes ``affine=True``.
- The hub names convs ``conv_1x1``/``conv_3x3``; we use the official ``nor_conv_*`` names so exported
  architectures convert one-to-one to official arch strings and the accuracy table.
- The RLNAS angle is path-aware: it needs the cell DAG (which edge feeds which node, in every cell). This space
  exposes it through :meth:`NasBench201Space.cell_dags`; the hub space has no such hook.
- Channels and cells per stage are plain integers here, so tests can build C=8, N=1 supernets.

Every cell shares one genotype: the edge ``j <- i`` of every cell is a ``LayerChoice`` labelled ``cell/{j}_{i}``,
so NNI samples it once per step for all cells (RLNAS's own code samples cells independently during training,
methods.md pitfall P4; sharing keeps training and scoring on the same architecture distribution).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from nni.mutable import label_scope
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni.nas.profiler.pytorch.utils.shape_formula import keep_shape_formula, register_shape_inference_formula

from nni_labelfree.benchmarks.nasbench201 import NB201_EDGES, NB201_OPS

__all__ = ['NasBench201Space', 'CellDAG', 'nb201_sample_is_trainable']

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellDAG:
    """The DAG of one searchable cell, as the path-aware angle reads it.

    Attributes
    ----------
    edges
        ``(src_node, dst_node, label, module_name)`` per searchable edge; ``module_name`` is the qualified name of
        the edge's choice module inside the model space (valid before and after one-shot mutation).
    sources, sinks
        Nodes where paths start and end.
    """
    edges: tuple[tuple[int, int, str, str], ...]
    sources: tuple[int, ...]
    sinks: tuple[int, ...]

    def paths(self) -> list[tuple[int, ...]]:
        """Every source-to-sink path as a tuple of indices into :attr:`edges`."""
        outgoing: dict[int, list[int]] = {}
        for k, (src, _, _, _) in enumerate(self.edges):
            outgoing.setdefault(src, []).append(k)
        found: list[tuple[int, ...]] = []

        def walk(node: int, trail: tuple[int, ...]) -> None:
            if node in self.sinks and trail:
                found.append(trail)
            for k in outgoing.get(node, []):
                walk(self.edges[k][1], trail + (k,))

        for source in self.sources:
            walk(source, ())
        return found


class Zero(nn.Module):
    """The ``none`` op: a zero tensor of the input's shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.)


# NNI's FLOPs/params profiler needs to know that `none` keeps its input's shape.
register_shape_inference_formula(Zero, keep_shape_formula)


class ReLUConvBN(nn.Sequential):
    """ReLU, convolution, BatchNorm: the NAS-Bench-201 conv op and the fixed blocks' building unit."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out, affine=affine, track_running_stats=True),
        )


def _candidate_ops(channels: int, affine: bool) -> dict[str, nn.Module]:
    builders: dict[str, Callable[[], nn.Module]] = {
        'none': Zero,
        'skip_connect': nn.Identity,
        'nor_conv_1x1': lambda: ReLUConvBN(channels, channels, 1, 1, affine),
        'nor_conv_3x3': lambda: ReLUConvBN(channels, channels, 3, 1, affine),
        'avg_pool_3x3': lambda: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
    }
    return {name: builders[name]() for name in NB201_OPS}


class SearchCell(nn.Module):
    """A 4-node NAS-Bench-201 cell; node ``j`` sums ``edge_{j<-i}(node_i)`` over ``i < j``."""

    def __init__(self, channels: int, affine: bool):
        super().__init__()
        # Labels `cell/{dst}_{src}`: NNI forbids `/` in a label, so the prefix comes from a label scope.
        with label_scope('cell'):
            self.edges = nn.ModuleDict({
                f'{dst}_{src}': LayerChoice(_candidate_ops(channels, affine), label=f'{dst}_{src}')
                for dst, src in NB201_EDGES
            })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for dst in range(1, 4):
            # A plain running sum (not torch.stack/sum) keeps NNI's FLOPs profiler formulas sufficient.
            total = self.edges[f'{dst}_0'](nodes[0])
            for src in range(1, dst):
                total = total + self.edges[f'{dst}_{src}'](nodes[src])
            nodes.append(total)
        return nodes[-1]


class ResidualReduction(nn.Module):
    """The fixed stride-2 ResNet basic block between stages (not searched)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, affine=True)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, affine=True)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(c_in, c_out, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NasBench201Space(ModelSpace):
    """The NAS-Bench-201 cell search space (5 ops on 6 edges, 15,625 cells) as an NNI ``ModelSpace``.

    Parameters
    ----------
    channels
        Width of the first stage (NAS-Bench-201: 16); stages use ``C, 2C, 4C``.
    cells_per_stage
        Searchable cells per stage (NAS-Bench-201: 5). ``1`` gives a CPU-sized supernet.
    num_classes
        Outputs of the final ``nn.Linear``.
    affine
        Whether BatchNorm inside candidate ops has affine parameters (RLNAS search cell: ``False``).
    in_channels
        Image channels.

    Examples
    --------
    >>> space = NasBench201Space(channels=8, cells_per_stage=1)
    >>> arch = {}; _ = space.random(memo=arch)
    >>> net = space.freeze(arch)
    """

    def __init__(self, channels: int = 16, cells_per_stage: int = 5, num_classes: int = 10,
                 affine: bool = False, in_channels: int = 3):
        super().__init__()
        for name, value in (('channels', channels), ('cells_per_stage', cells_per_stage),
                            ('num_classes', num_classes), ('in_channels', in_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'NasBench201Space: {name} must be a positive integer, got {value!r}.')
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        layers: list[nn.Module] = []
        width = channels
        for stage in range(3):
            if stage > 0:
                layers.append(ResidualReduction(width, width * 2))
                width *= 2
            layers.extend(SearchCell(width, affine) for _ in range(cells_per_stage))
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``[N, 4C, H/4, W/4]`` the classifier pools (spatial pretext heads use it)."""
        out = self.stem(x)
        for cell in self.cells:
            out = cell(out)
        return self.lastact(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pooling(self.features(x)).flatten(1))

    def cell_dags(self) -> list[CellDAG]:
        """The DAG of every searchable cell, for path-aware angle metrics (RLNAS)."""
        dags = []
        for index, cell in enumerate(self.cells):
            if isinstance(cell, SearchCell):
                edges = tuple((src, dst, f'cell/{dst}_{src}', f'cells.{index}.edges.{dst}_{src}')
                              for dst, src in NB201_EDGES)
                dags.append(CellDAG(edges=edges, sources=(0,), sinks=(3,)))
        return dags

    @staticmethod
    def sample_filter(sample: dict) -> bool:
        """Whether a sampled cell is worth a training step: see :func:`nb201_sample_is_trainable`."""
        return nb201_sample_is_trainable(sample)


def nb201_sample_is_trainable(sample: dict) -> bool:
    """True when every node of the cell has at least one incoming edge that is not ``none``.

    RLNAS's NAS-Bench-201 supernet redraws a node's edges until one is not ``none`` (``forward_urs``); with a shared
    genotype the same rule becomes a filter on the whole sample.
    """
    for dst in range(1, 4):
        if all(sample.get(f'cell/{dst}_{src}') == 'none' for src in range(dst)):
            return False
    return True
