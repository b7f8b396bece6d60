"""UnNAS: DARTS whose objective is a self-supervised pretext task, as an NNI one-shot strategy.

Reference: Chenxi Liu, Piotr Dollar, Kaiming He, Ross Girshick, Alan Yuille, Saining Xie, "Are Labels Necessary for
Neural Architecture Search?", ECCV 2020.

First-order DARTS (NNI's :class:`~nni.nas.oneshot.pytorch.strategy.DARTS`, subclassed) in which:

- the evaluator's training images (never their labels) are split in halves, the first for the weights and the
  second for the architecture parameters (UnNAS's ``PORTION: 0.5``), and each half is turned into a pretext
  dataset (:func:`nni_labelfree.data.pretext_dataset`): rotation, colorization or jigsaw; ``task='supervised'``
  keeps the true labels, the supervised DARTS control through the same code path;
- each image is augmented once before the pretext transform, as in the paper (``augment``: random crop of the
  zero-padded image and horizontal flip, :class:`~nni_labelfree.data.CropFlipDataset`, new crops every epoch);
- the space's head is adapted to the task (:class:`nni_labelfree.heads.PretextNetwork`);
- each step takes the architecture step on a batch of the second half, then the weight step on the first (UnNAS's
  order), with Adam(betas 0.5/0.999, weight decay 1e-3) for the architecture and gradient-norm clipping at 5;
- export follows the space: a space with ``arch_from_probs(probs)`` (the DARTS cell space: top-2 inputs per node
  by their strongest non-``none`` op) decides, others take the argmax of each choice (NAS-Bench-201).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from nni.nas.nn.pytorch import ModelSpace
from nni.nas.oneshot.pytorch.strategy import DARTS

from nni_labelfree.data import CropFlipDataset, EpochShuffleSampler, TrueLabelDataset, pretext_dataset
from nni_labelfree.heads import PRETEXT_TASKS, PretextNetwork
from nni_labelfree.strategies.darts_base import OrderedDartsModule

__all__ = ['UnNAS', 'UnNASModule', 'count_skip_connections']

_logger = logging.getLogger(__name__)

# Architecture learning rates of UnNAS's search configs (ImageNet-1K): rot/jig 1.5e-4, cls/col 3e-4.
_ARC_LR = {'rotation': 1.5e-4, 'jigsaw': 1.5e-4, 'colorization': 3e-4, 'supervised': 3e-4}


def count_skip_connections(arch: dict) -> int:
    """Skip connections in the normal cell (labels ``normal/...``) or, for single-cell spaces, in the whole arch."""
    normal = {k: v for k, v in arch.items() if k.startswith('normal/')}
    return sum(1 for v in (normal or arch).values() if v == 'skip_connect')


def _epoch_dependents(dataset) -> list:
    """``dataset`` and the datasets it wraps (through ``.base``) that draw per epoch (have ``set_epoch``)."""
    found = []
    while dataset is not None:
        if hasattr(dataset, 'set_epoch'):
            found.append(dataset)
        dataset = getattr(dataset, 'base', None)
    return found


class UnNASModule(OrderedDartsModule):
    """The Lightning module behind :class:`UnNAS`: pretext losses in the DARTS step, space-aware export."""

    def _pretext_step(self, batch: Any, prefix: str | None) -> torch.Tensor:
        inputs, targets = batch
        logits = self.training_module(inputs)
        loss = F.cross_entropy(logits, targets)
        if prefix is not None:
            accuracy = (logits.argmax(1) == targets).float().mean()
            self.log(f'{prefix}_loss', loss, prog_bar=True)
            self.log(f'{prefix}_acc', accuracy, prog_bar=True)
            # NNI's evaluator reports `train_<metric>` at fit end (nni3.md, pitfall 6): give it the pretext numbers.
            self.log('train_loss', loss)
            for name in getattr(self.training_module, 'metrics', {}):
                self.log(f'train_{name}', accuracy)
        return loss

    def training_step(self, batch, batch_idx):
        arc_optim = self.architecture_optimizers()
        if self.warmup_epochs == 0 or self.trainer.current_epoch >= self.warmup_epochs:
            self.resample()
            arc_optim.zero_grad()
            self.manual_backward(self._pretext_step(batch['val'], None))
            arc_optim.step()
        self.resample()
        loss = self._pretext_step(batch['train'], 'pretext')
        self.advance_optimization(loss, batch_idx, self.gradient_clip_val)
        self.advance_lr_schedulers(batch_idx)
        return loss

    def export(self) -> dict[str, Any]:
        """The architecture the space derives from the current alphas (see the module docstring)."""
        space = self.model.space if isinstance(self.model, PretextNetwork) else self.model
        if callable(getattr(space, 'arch_from_probs', None)):
            return space.arch_from_probs(self.export_probs())
        return super().export()

    def on_train_epoch_end(self) -> None:
        self.log('skip_connections', float(count_skip_connections(self.export())))
        return super().on_train_epoch_end()


class UnNAS(DARTS):
    """UnNAS (Liu et al., ECCV 2020) as a drop-in NNI one-shot strategy.

    ``NasExperiment(space, evaluator, UnNAS(task='jigsaw')).run()``: the images of the evaluator's training loader
    are used (the first half for weights, the second for alphas), their labels never (except ``task='supervised'``).

    Parameters
    ----------
    task
        ``'rotation'``, ``'colorization'``, ``'jigsaw'`` or ``'supervised'`` (the DARTS-with-labels control).
    seed
        Seeds the pretext transforms (random tiles, permutations).
    task_kwargs
        Extra arguments of the pretext dataset (e.g. ``grid``, ``num_permutations`` for jigsaw).
    arc_learning_rate
        Adam learning rate of the architecture parameters; default: UnNAS's value for the task.
    gradient_clip_val
        Gradient-norm clip of the weight step (UnNAS: 5).
    warmup_epochs
        Epochs before alphas start to move (UnNAS ImageNet: 1 of 2).
    augment
        Augment each image before the pretext transform (and the supervised control's images), as the paper does:
        a random crop of the image zero-padded by ``min(H, W) // 8`` pixels and a horizontal flip with probability
        1/2 (:class:`~nni_labelfree.data.CropFlipDataset`; the paper's ImageNet pipeline crops random-resized),
        drawn anew every epoch, seeded by ``(seed + half, epoch, image)``. ``False``: the images as they come.
    """

    def __init__(self, task: str = 'rotation', *, seed: int = 0, task_kwargs: dict | None = None,
                 arc_learning_rate: float | None = None, gradient_clip_val: float | None = 5.0,
                 warmup_epochs: int = 0, augment: bool = True, **kwargs: Any):
        if task not in PRETEXT_TASKS:
            raise ValueError(f'Unknown UnNAS task {task!r}; expected one of {", ".join(PRETEXT_TASKS)}.')
        if not isinstance(augment, bool):
            raise TypeError(f'UnNAS augment must be True (crop and flip each image) or False, got {augment!r}.')
        super().__init__(arc_learning_rate=arc_learning_rate or _ARC_LR[task], gradient_clip_val=gradient_clip_val,
                         warmup_epochs=warmup_epochs, **kwargs)
        self.task, self.seed, self.task_kwargs = task, int(seed), dict(task_kwargs or {})
        self.augment = augment
        self._num_outputs: int | None = None
        self._tiles = 1
        self._module: UnNASModule | None = None

    def configure_oneshot_module(self, training_module) -> UnNASModule:
        self._module = UnNASModule(training_module, arc_learning_rate=self.arc_learning_rate,
                           gradient_clip_val=self.gradient_clip_val, log_prob_every_n_step=self.log_prob_every_n_step,
                           warmup_epochs=self.warmup_epochs, penalty=self.penalty)
        return self._module

    def mutate_model(self, model: ModelSpace) -> ModelSpace:
        """The DARTS supernet of ``model``, wrapped with the task's head (sized from a probe of the task)."""
        if self._num_outputs is None:
            raise RuntimeError('UnNAS needs the training images before the model: call prepare(train_loader) '
                               'first, or run through NasExperiment, which does so.')
        supernet = super().mutate_model(model)
        return PretextNetwork(supernet, self.task, self._num_outputs, tiles=self._tiles)

    def mutate_evaluator(self, evaluator):
        self.prepare(evaluator.train_dataloaders)
        return super().mutate_evaluator(evaluator)

    def _initialize(self, model_space, engine):
        # NNI mutates the model before the evaluator; the head's size comes from the data, so look at it first.
        self.prepare(model_space.evaluator.train_dataloaders)
        return super()._initialize(model_space, engine)

    def prepare(self, loader: Any) -> None:
        """Size the task head from the training data (``NasExperiment`` calls this; call it yourself before
        ``mutate_model`` when driving the strategy by hand)."""
        if not isinstance(loader, DataLoader):
            raise TypeError(f'UnNAS needs a single torch DataLoader of training images, got {type(loader).__name__}.')
        probe = self._task_dataset(loader.dataset, self.seed, augment=False)
        self._num_outputs = int(probe.num_classes)
        sample = probe[0][0]
        self._tiles = int(sample.shape[0]) if self.task == 'jigsaw' else 1

    def _task_dataset(self, base, seed: int, *, augment: bool | None = None):
        if self.augment if augment is None else augment:
            base = CropFlipDataset(base, seed)  # the crops' own stream, apart from the pretext draws of `seed`
        if self.task == 'supervised':
            return TrueLabelDataset(base, **self.task_kwargs)
        return pretext_dataset(self.task, base, seed=seed, **self.task_kwargs)

    def _halves(self, loader: DataLoader) -> tuple[DataLoader, DataLoader]:
        dataset = loader.dataset
        if len(dataset) < 2 * (loader.batch_size or 1):
            raise ValueError(f'UnNAS splits the training images in halves for weights and alphas; {len(dataset)} '
                             f'images are too few for batch size {loader.batch_size}. Use more images or a smaller batch.')
        half = len(dataset) // 2
        loaders = []
        for offset, indices in ((0, range(half)), (1, range(half, 2 * half))):
            task_data = self._task_dataset(Subset(dataset, list(indices)), self.seed + offset)
            sampler = EpochShuffleSampler(len(task_data), self.seed + offset)
            if self._module is not None:
                self._module.epoch_dependents += [*_epoch_dependents(task_data), sampler]
            loaders.append(DataLoader(task_data, batch_size=loader.batch_size, sampler=sampler, drop_last=True,
                                      num_workers=loader.num_workers, collate_fn=getattr(task_data, 'collate_fn', None)))
        return loaders[0], loaders[1]

    def train_dataloader(self, train_dataloader_fn, val_dataloader_fn):
        """``{'train': first half, 'val': second half}`` of the training images, as pretext data."""
        weights, alphas = self._halves(train_dataloader_fn())
        return {'train': weights, 'val': alphas}

    def val_dataloader(self, train_dataloader_fn, val_dataloader_fn):
        return None
