"""The Lightning side of retraining: the training module and the per-epoch reporting callback.

:class:`RetrainModule` extends our SGD/cosine version of NNI's ``ClassificationModule``
(:class:`~nni_labelfree.experiment.evaluator.SGDClassificationModule`) with what the papers' retraining recipes add:
batch augmentation, DARTS's auxiliary loss and its linearly ramped drop-path (Liu et al., ICLR 2019), and exact
per-epoch loss/accuracy sums (NNI's module logs per-step values). :class:`EpochReporter` turns each epoch into one
metric dict for a reporter (``nni.report_intermediate_result`` in a trial) and keeps the history.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import nni
import torch
from torch import nn

from nni_labelfree.experiment.evaluator import SGDClassificationModule
from nni_labelfree.experiment.history import EpochHistory

__all__ = ['RetrainModule', 'EpochReporter', 'STAGES']

_logger = logging.getLogger(__name__)

STAGES = ('train', 'val', 'test')
Reporter = Callable[[dict], None]


@nni.trace
class RetrainModule(SGDClassificationModule):
    """Cross-entropy training of a fixed network with augmentation, auxiliary loss and drop-path schedule.

    Parameters
    ----------
    learning_rate, weight_decay, momentum, nesterov, min_learning_rate, max_epochs, num_classes
        As :class:`~nni_labelfree.experiment.evaluator.SGDClassificationModule` (SGD, cosine per epoch).
    auxiliary_weight
        Weight of the auxiliary logits' loss when the network returns ``(logits, aux_logits)`` in training.
    drop_path
        Final drop-path probability; epoch ``e`` (from 0) trains with ``drop_path * e / max_epochs`` (DARTS), set
        through the network's ``set_drop_path``.
    augment
        A module applied to every training batch on the device (e.g. :class:`~.retrain_data.BatchAugment`).
    """

    def __init__(self, learning_rate: float = 0.1, weight_decay: float = 5e-4, momentum: float = 0.9,
                 nesterov: bool = True, min_learning_rate: float = 0.0, max_epochs: int = 1, num_classes: int = 10,
                 auxiliary_weight: float = 0.0, drop_path: float = 0.0, augment: nn.Module | None = None):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, momentum=momentum,
                         nesterov=nesterov, min_learning_rate=min_learning_rate, max_epochs=max_epochs,
                         num_classes=num_classes)
        self.auxiliary_weight, self.drop_path = float(auxiliary_weight), float(drop_path)
        self.augment = augment
        self.shuffle_generator: torch.Generator | None = None  # the training loader's, saved in checkpoints
        self._sums: dict[str, torch.Tensor] = {}

    # -- checkpoints: the random streams, so that a resumed run continues the same sequence ----------------------
    def _generators(self) -> dict[str, torch.Generator]:
        found = {'augment': getattr(self.augment, 'generator', None), 'shuffle': self.shuffle_generator}
        return {name: generator for name, generator in found.items() if generator is not None}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        states = {name: generator.get_state() for name, generator in self._generators().items()}
        states['torch'] = torch.get_rng_state()  # drop-path masks
        if torch.cuda.is_available():
            states['cuda'] = torch.cuda.get_rng_state_all()
        checkpoint['retrain_rng_states'] = states
        # NNI's module saves its criterion and optimiser classes as hyper-parameters; resuming does not need them,
        # and without them the checkpoint loads with torch.load(weights_only=True).
        checkpoint.pop('hyper_parameters', None)
        checkpoint.pop('hparams_name', None)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get('retrain_rng_states', {})
        for name, generator in self._generators().items():
            if name in states:
                generator.set_state(states[name])
        if 'torch' in states:
            torch.set_rng_state(states['torch'])
        if 'cuda' in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states['cuda'])

    # -- per-stage sums: (loss x n, correct, n), kept on the device and read once per epoch ---------------------------
    def _reset(self, stage: str) -> None:
        self._sums[stage] = torch.zeros(3, dtype=torch.float64, device=self.device)

    def _accumulate(self, stage: str, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        n = targets.numel()
        correct = (logits.argmax(1) == targets).sum()
        self._sums[stage] += torch.stack([loss.detach().double() * n, correct.double(),
                                          torch.tensor(n, dtype=torch.float64, device=self.device)])

    def stage_metrics(self, stage: str) -> dict[str, float]:
        """``{'loss', 'acc'}`` (accuracy in percent) of the stage's last epoch; empty if it did not run."""
        if stage not in self._sums:
            return {}
        loss_sum, correct, count = self._sums[stage].tolist()
        if count == 0:
            return {}
        return {'loss': loss_sum / count, 'acc': 100.0 * correct / count}

    # -- training ----------------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._reset('train')
        if hasattr(self.model, 'set_drop_path'):
            self.model.set_drop_path(self.drop_path * self.current_epoch / max(1, self.max_epochs))

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        if self.augment is not None:
            inputs = self.augment(inputs)
        output = self.model(inputs)
        logits, aux_logits = output if isinstance(output, tuple) else (output, None)
        loss = self.criterion(logits, targets)
        if aux_logits is not None and self.auxiliary_weight > 0:
            loss = loss + self.auxiliary_weight * self.criterion(aux_logits, targets)
        self._accumulate('train', loss, logits, targets)
        return loss

    # -- evaluation --------------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._reset('val')

    def on_test_epoch_start(self) -> None:
        self._reset('test')

    def _evaluate(self, stage: str, batch) -> None:
        inputs, targets = batch
        logits = self.model(inputs)
        self._accumulate(stage, self.criterion(logits, targets), logits, targets)

    def validation_step(self, batch, batch_idx):
        self._evaluate('val', batch)

    def test_step(self, batch, batch_idx):
        self._evaluate('test', batch)


class EpochReporter(EpochHistory):
    """One metric dict per epoch: ``epoch``, ``train_loss``/``train_acc``, ``val_loss``/``val_acc`` (when a
    validation split exists), ``lr``, ``drop_path``, ``epoch_seconds`` and ``default`` (validation accuracy, else
    training accuracy), passed to ``reporter`` and kept in :attr:`history`.

    Lightning runs the epoch's validation before ``on_train_epoch_end``, so both are known here.
    """

    def __init__(self, reporter: Reporter | None = None):
        super().__init__(reporter)
        self._epoch_start = 0.0
        self._lr = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()
        self._lr = float(trainer.optimizers[0].param_groups[0]['lr'])  # the epoch's own rate (schedule steps at end)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics: dict = {'epoch': trainer.current_epoch + 1}
        for stage in ('train', 'val'):
            metrics.update({f'{stage}_{k}': v for k, v in pl_module.stage_metrics(stage).items()})
        metrics.update(lr=self._lr, drop_path=pl_module.drop_path * trainer.current_epoch / max(1, trainer.max_epochs),
                       epoch_seconds=time.perf_counter() - self._epoch_start)
        metrics['default'] = metrics.get('val_acc', metrics.get('train_acc', 0.0))
        self.publish(metrics)
