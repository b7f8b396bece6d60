"""The evaluator our searches train supernets with: NNI's ``Classification`` with the papers' SGD recipe.

NNI's ``ClassificationModule`` builds its optimiser as ``optimizer(params, lr, weight_decay)`` (no momentum, no
schedule) and, under nnictl, reports its own ``val_acc`` as the trial's metrics (nni3.md, pitfall 6). The search
trials report their own metrics, so this module adds SGD with momentum/Nesterov and a cosine schedule and leaves
reporting to the trial.
"""
from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader

import nni
from nni.nas.evaluator.pytorch import Lightning, Trainer
from nni.nas.evaluator.pytorch.lightning import ClassificationModule

__all__ = ['SGDClassificationModule', 'sgd_classification']

_logger = logging.getLogger(__name__)


@nni.trace
class SGDClassificationModule(ClassificationModule):
    """``ClassificationModule`` with SGD (momentum, Nesterov) and a per-epoch cosine learning-rate schedule.

    Parameters
    ----------
    learning_rate, weight_decay, momentum, nesterov
        SGD settings.
    min_learning_rate
        Floor of the cosine schedule.
    max_epochs
        Length of the cosine schedule.
    num_classes
        Classifier outputs (for the accuracy metric).
    """

    def __init__(self, learning_rate: float = 0.025, weight_decay: float = 5e-4, momentum: float = 0.9,
                 nesterov: bool = True, min_learning_rate: float = 0.001, max_epochs: int = 1,
                 num_classes: int = 10):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, num_classes=num_classes,
                         optimizer=torch.optim.SGD)
        self.momentum, self.nesterov = momentum, nesterov
        self.min_learning_rate, self.max_epochs = min_learning_rate, max_epochs

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate, momentum=self.momentum,
                                    nesterov=self.nesterov and self.momentum > 0,
                                    weight_decay=self.hparams.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.max_epochs),
                                                              eta_min=self.min_learning_rate)
        return {'optimizer': optimizer, 'lr_scheduler': {'scheduler': schedule, 'interval': 'epoch'}}

    # The search trial reports its own metrics; NNI's automatic reports would duplicate or override them.
    def on_validation_epoch_end(self) -> None:
        pass

    def on_fit_end(self) -> None:
        pass

    def on_validation_end(self) -> None:
        pass


def sgd_classification(train_loader: DataLoader, val_loader: DataLoader, *, num_classes: int, max_epochs: int,
                       learning_rate: float, weight_decay: float, momentum: float = 0.9, nesterov: bool = True,
                       min_learning_rate: float = 0.001, **trainer_kwargs) -> Lightning:
    """A ``Lightning`` evaluator training with :class:`SGDClassificationModule`.

    ``trainer_kwargs`` go to NNI's traced ``Trainer`` (``accelerator``, ``devices``, ``callbacks``, ...).
    """
    module = SGDClassificationModule(learning_rate=learning_rate, weight_decay=weight_decay, momentum=momentum,
                                     nesterov=nesterov, min_learning_rate=min_learning_rate, max_epochs=max_epochs,
                                     num_classes=num_classes)
    trainer_kwargs.setdefault('enable_checkpointing', False)
    trainer_kwargs.setdefault('logger', False)
    trainer_kwargs.setdefault('enable_model_summary', False)
    trainer = Trainer(max_epochs=max_epochs, **trainer_kwargs)
    return Lightning(module, trainer, train_dataloaders=train_loader, val_dataloaders=val_loader)

