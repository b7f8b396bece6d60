"""What every DARTS-family strategy of this package shares on top of NNI's DARTS Lightning module.

NNI 3.0's ``DartsLightningModule.arch_parameters`` deduplicates the alphas through a ``set``, so their order, and
with it the order of the architecture optimiser's parameters, follows object addresses and changes from process to
process. A fresh search does not notice, but resuming one maps the saved Adam moments onto other alphas (all
NAS-Bench-201 alphas have the same shape, so nothing fails loudly) and the resumed search drifts away from the
uninterrupted one. :class:`OrderedDartsModule` keeps the supernet's module order instead.

It also tells everything whose draw depends on the epoch (shuffle orders, jigsaw's tiles) the epoch at its start,
so a search resumed from an epoch checkpoint sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import logging

from typing import Any

from torch import nn

from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule

__all__ = ['OrderedDartsModule']

_logger = logging.getLogger(__name__)


class OrderedDartsModule(DartsLightningModule):
    """NNI's :class:`~nni.nas.oneshot.pytorch.differentiable.DartsLightningModule` with a stable alpha order.

    Used by :class:`~nni_labelfree.strategies.UnNAS` and the other DARTS-family strategies, so a search resumed from
    a checkpoint restores each alpha's optimiser state to that alpha (see the module docstring).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.epoch_dependents: list = []  # samplers/datasets with set_epoch, registered by the strategy's loaders

    def on_train_epoch_start(self) -> None:
        for dependent in self.epoch_dependents:
            dependent.set_epoch(self.trainer.current_epoch)
        return super().on_train_epoch_start()

    def arch_parameters(self) -> list[nn.Parameter]:
        """Every architecture parameter once (shared alphas included once), in the supernet's module order."""
        unique: dict[int, nn.Parameter] = {}
        for module in self.supernet_modules():
            for param in getattr(module, 'arch_parameters', lambda: [])():
                unique.setdefault(id(param), param)
        return list(unique.values())
