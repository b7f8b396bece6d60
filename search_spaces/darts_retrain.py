"""The DARTS evaluation network: a frozen :class:`~.darts.DartsSpace` plus auxiliary head and drop-path.

Reference: Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019, section 3.3 and appendix
A.2 (CIFAR-10 evaluation: 20 cells, 36 initial channels, cutout, path dropout 0.2, auxiliary towers of weight 0.4);
the same recipe retrains the cells of RLNAS, UnNAS and UnrealNAS.

``DartsSpace.freeze`` already gives the evaluation cells (affine BatchNorm everywhere, no BN after pooling with
``pool_bn=False``, ``none`` edges skipped). This module adds what training it needs and the search network lacks:

- **drop-path**: during training, each chosen op's output (except identity skips and ``none``) is zeroed per sample
  with probability ``p`` and scaled by ``1/(1-p)``; :meth:`DartsRetrainNetwork.set_drop_path` sets ``p`` (DARTS
  ramps it linearly from 0 over the epochs);
- **auxiliary head** on the output of the second reduction cell (cell ``2*num_cells//3``): ReLU, 5x5 average pool
  with stride 3 (an adaptive 2x2 pool on inputs other than 8x8), 1x1 conv to 128, BN, ReLU, 2x2 conv to 768, BN,
  ReLU, linear classifier. In training mode ``forward`` returns ``(logits, auxiliary_logits)``, otherwise logits.
"""
from __future__ import annotations

import logging
from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from .darts import NODES, DartsSpace, Zero

__all__ = ['DartsRetrainNetwork', 'AuxiliaryHead', 'DropPath', 'darts_eval_space']

_logger = logging.getLogger(__name__)


def darts_eval_space(width: int, num_cells: int, num_classes: int = 10, in_channels: int = 3) -> DartsSpace:
    """The DARTS space as the evaluation network builds its ops: affine BatchNorm, no BN after pooling."""
    return DartsSpace(width=width, num_cells=num_cells, num_classes=num_classes, in_channels=in_channels,
                      affine=True, pool_bn=False)


class DropPath(nn.Module):
    """Wrap an op: in training, zero its output per sample with probability ``drop_prob``, scale the rest up."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = op
        self.drop_prob = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.op(x)
        if not self.training or self.drop_prob <= 0:
            return out
        keep = 1.0 - self.drop_prob
        mask = torch.empty(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype).bernoulli_(keep)
        return out * mask / keep


class AuxiliaryHead(nn.Module):
    """DARTS's CIFAR auxiliary classifier on an ``[N, channels, 8, 8]`` feature map."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        if tuple(x.shape[-2:]) == (8, 8):
            x = F.avg_pool2d(x, 5, stride=3, padding=0, count_include_pad=False)
        else:  # other image sizes: pool to the 2x2 the 2x2 convolution expects
            x = F.adaptive_avg_pool2d(x, 2)
        return self.classifier(self.features(x).flatten(1))


class DartsRetrainNetwork(nn.Module):
    """A fixed DARTS network for training from scratch, with optional auxiliary head and drop-path.

    Parameters
    ----------
    frozen
        ``DartsSpace(...).freeze(arch)``, ideally of :func:`darts_eval_space`. Its modules are reused (not copied).
    num_classes
        Outputs of the auxiliary classifier (the main one is ``frozen.classifier``).
    auxiliary
        Build the auxiliary head.

    Examples
    --------
    >>> net = DartsRetrainNetwork.from_arch(arch, width=36, num_cells=20, auxiliary=True)
    >>> net.set_drop_path(0.2 * epoch / epochs)
    """

    def __init__(self, frozen: DartsSpace, num_classes: int = 10, auxiliary: bool = False):
        super().__init__()
        if not isinstance(frozen, DartsSpace) or frozen.simplify():
            raise TypeError('DartsRetrainNetwork needs a frozen DartsSpace: DartsSpace(...).freeze(arch).')
        self.network = frozen
        self.aux_index = 2 * len(frozen.cells) // 3
        self.auxiliary = AuxiliaryHead(self._cell_channels(self.aux_index), num_classes) if auxiliary else None
        self._wrap_ops()

    @classmethod
    def from_arch(cls, arch: Mapping[str, str], width: int = 36, num_cells: int = 20, num_classes: int = 10,
                  auxiliary: bool = True) -> 'DartsRetrainNetwork':
        """Build the evaluation space, freeze it at ``arch`` and wrap it."""
        return cls(darts_eval_space(width, num_cells, num_classes).freeze(dict(arch)), num_classes, auxiliary)

    def _cell_channels(self, index: int) -> int:
        cell = self.network.cells[index]
        return len(NODES) * cell.preprocess1[1].out_channels  # preprocess1 = ReLU, 1x1 conv to C, BN

    def _wrap_ops(self) -> None:
        for cell in self.network.cells:
            for key, op in list(cell.edges.items()):
                if not isinstance(op, (Zero, nn.Identity)):  # DARTS drops every path but identity skips
                    cell.edges[key] = DropPath(op)

    def set_drop_path(self, prob: float) -> None:
        """Set the drop-path probability of every wrapped op (in ``[0, 1)``)."""
        if not 0 <= prob < 1:
            raise ValueError(f'drop-path probability must lie in [0, 1), got {prob}.')
        for module in self.modules():
            if isinstance(module, DropPath):
                module.drop_prob = float(prob)

    def inference_parameters(self) -> int:
        """Parameters of the network without the auxiliary head (what DARTS and the papers report)."""
        return sum(p.numel() for p in self.network.parameters())

    def forward(self, x: torch.Tensor):
        net = self.network
        if net.stem_type == 'cifar':
            s0 = s1 = net.stem(x)
        else:
            s0 = net.stem0(x)
            s1 = net.stem1(s0)
        aux_logits = None
        for index, cell in enumerate(net.cells):
            s0, s1 = s1, cell(s0, s1)
            if index == self.aux_index and self.auxiliary is not None and self.training:
                aux_logits = self.auxiliary(s1)
        logits = net.classifier(net.global_pooling(s1).flatten(1))
        return (logits, aux_logits) if aux_logits is not None else logits
