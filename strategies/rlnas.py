"""RLNAS: neural architecture search with random labels, as an NNI one-shot strategy.

Reference: Xuanyang Zhang, Pengfei Hou, Xiangyu Zhang, Jian Sun, "Neural Architecture Search with Random Labels",
CVPR 2021.

1. The evaluator's training images get random labels (:class:`~nni_labelfree.data.RandomLabelDataset`; its true
   labels are never read).
2. The initial supernet weights ``theta_0`` are snapshotted at the start of fitting.
3. The supernet is trained with single-path uniform sampling (SPOS) on the random labels, by the evaluator's own
   training step and optimiser.
4. :meth:`RLNASModule.export` scores architectures by the angle between their ``theta_0`` and trained weight
   vectors (:mod:`nni_labelfree.metrics.angle`) and selects the largest: exhaustively when the space is small and
   unconstrained, else by evolutionary search (:func:`nni_labelfree.selection.evolve`), optionally under a
   FLOPs/params constraint.
"""
from __future__ import annotations

import hashlib
import logging
import math
import random
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from nni.nas.nn.pytorch import ModelSpace
from nni.nas.oneshot.pytorch.sampling import RandomSamplingLightningModule
from nni.nas.oneshot.pytorch.strategy import RandomOneShot

from nni_labelfree.data import EpochShuffleSampler, RandomLabelDataset
from nni_labelfree.metrics.angle import (AnglePolicy, angle_scorer, check_policy_fits, parameter_snapshot,
                                         plain_architecture)
from nni_labelfree.selection import evolve

from .common import RankedOneShot, rng_state_from_plain, rng_state_to_plain, use_channels_last

__all__ = ['RLNAS', 'RLNASModule', 'EpochShuffleSampler']

_logger = logging.getLogger(__name__)

_SEARCH_MODES = ('auto', 'exhaustive', 'evolution')


def _labels_digest(datasets: Sequence[RandomLabelDataset]) -> str:
    digest = hashlib.sha256()
    for dataset in datasets:
        digest.update(dataset.labels.numpy().tobytes())
    return digest.hexdigest()


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f'RLNAS needs a space whose output is a classifier (a final nn.Linear), but '
                         f'{type(model).__name__} has no nn.Linear. Add a linear classification head.')
    return linears[-1]


class RLNASModule(RandomSamplingLightningModule):
    """The Lightning module behind :class:`RLNAS`: seeded SPOS training, a ``theta_0`` snapshot, angle export.

    Its checkpoints carry everything a resumed search needs beyond Lightning's own state (weights, optimiser,
    scheduler, loops): ``theta_0``, the path sampler's RNG state, the global torch RNG state (DataLoader worker seeds
    and any dropout draw from it), the data epoch and a digest of the random labels, which a resumed run checks.
    Every rank of a DDP run seeds the path sampler identically, so all ranks train the same path at every step.

    Parameters
    ----------
    training_module
        The evaluator's Lightning module (its ``training_step`` computes the loss on the random labels).
    strategy
        The owning :class:`RLNAS` (hyper-parameters of sampling and selection).
    """

    def __init__(self, training_module, strategy: 'RLNAS'):
        super().__init__(training_module, filter=strategy.filter)
        self.strategy = strategy
        self.initial_weights: dict[str, torch.Tensor] | None = None
        self.search_result: list[tuple[dict, float]] | None = None
        self._sampler_rng = np.random.RandomState(strategy.seed)
        self.label_datasets: list[RandomLabelDataset] = []
        self.shuffle_samplers: list[EpochShuffleSampler] = []
        self.last_sample: dict | None = None  # the path trained by the latest step (for logging and tests)
        self._data_epoch = 0
        self._mutables: list | None = None

    # -- sampling -----------------------------------------------------------------------------------------------
    def resample(self) -> dict:
        """Draw a uniform single path from the module's own seeded generator (identical on every DDP rank).

        If the space has a ``repair(sample, rng)`` hook (DARTS: exactly two non-``none`` inputs per node, RLNAS's
        ``check_cand``), each draw is repaired before the supernet takes it; the repair's ``random.Random`` is
        seeded from the same generator, so checkpoints (which save that generator) resume the same paths.
        """
        if self._mutables is None:
            self._mutables = list(self.model.simplify().values())
        repair = self.strategy.repair

        def draw() -> dict:
            sample: dict = {}
            for mutable in self._mutables:
                mutable.random(memo=sample, random_state=self._sampler_rng)
            if repair is not None:
                sample = repair(sample, random.Random(int(self._sampler_rng.randint(0, 2 ** 31 - 1))))
            for module in self.supernet_modules():
                module.resample(memo=sample)
            return sample
        self.last_sample = self._repeat_until_valid(draw)
        return self.last_sample

    # -- data epochs --------------------------------------------------------------------------------------------
    def set_data_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s shuffle order and (per-iteration modes) random labels."""
        self._data_epoch = int(epoch)
        for dataset in self.label_datasets:
            dataset.set_epoch(self._data_epoch)
        for sampler in self.shuffle_samplers:
            sampler.set_epoch(self._data_epoch)

    def _next_data_epoch(self) -> int:
        # Lightning counts an epoch as processed once its batches are done, so at an end-of-epoch checkpoint this is
        # the epoch that comes next (and mid-epoch, the current one).
        try:
            progress = self.trainer.fit_loop.epoch_progress
        except (RuntimeError, AttributeError):  # not attached to a trainer
            progress = None
        return int(progress.current.processed) if progress is not None else self._data_epoch

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.initial_weights is None:
            self.initial_weights = parameter_snapshot(self.model)
        return super().on_fit_start()

    def on_train_epoch_start(self) -> None:
        self.set_data_epoch(self.trainer.current_epoch)
        return super().on_train_epoch_start()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint['rlnas_initial_weights'] = self.initial_weights
        checkpoint['rlnas_sampler_state'] = rng_state_to_plain(self._sampler_rng)
        checkpoint['rlnas_torch_rng_state'] = torch.get_rng_state()
        checkpoint['rlnas_data'] = {'epoch': self._data_epoch, 'next_epoch': self._next_data_epoch(),
                                    'label_digest': _labels_digest(self.label_datasets)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.initial_weights = checkpoint.get('rlnas_initial_weights')
        if 'rlnas_sampler_state' in checkpoint:
            state = checkpoint['rlnas_sampler_state']
            self._sampler_rng.set_state(rng_state_from_plain(state) if isinstance(state, Mapping) else state)
        if 'rlnas_torch_rng_state' in checkpoint:
            torch.set_rng_state(checkpoint['rlnas_torch_rng_state'])
        if 'rlnas_data' in checkpoint:
            self._check_labels(checkpoint['rlnas_data'])
            # Set now, not at epoch start: Lightning builds the first resumed epoch's DataLoader iterator (and worker
            # processes read their indices and labels) before on_train_epoch_start runs.
            self.set_data_epoch(checkpoint['rlnas_data']['next_epoch'])

    def _check_labels(self, data: Mapping[str, Any]) -> None:
        """The random labels are rebuilt from the seed on resume; refuse to continue if they came out different."""
        self.set_data_epoch(data['epoch'])
        if self.label_datasets and data.get('label_digest') != _labels_digest(self.label_datasets):
            raise ValueError('RLNAS: the random labels rebuilt for this run differ from the ones the checkpoint was '
                             'trained on (different seed, data, num_classes or label_mode). Resume with the '
                             'original settings, or start the search over in a new output folder.')

    # -- scoring and export -------------------------------------------------------------------------------------
    def angle_scorer(self):
        """An angle scorer between ``theta_0`` and the current weights (see :mod:`nni_labelfree.metrics.angle`)."""
        if self.initial_weights is None:
            raise RuntimeError('RLNAS has no initial-weight snapshot yet: train the supernet (fit) before scoring.')
        return angle_scorer(self.model, self.initial_weights, policy=self.strategy.angle_policy,
                            path_aware=self.strategy.path_aware)

    def export(self) -> dict[str, Any]:
        """Select the architecture with the largest angle; the ranking is kept in :attr:`search_result`."""
        self.search_result = self.strategy.select(self.angle_scorer())
        best, angle = self.search_result[0]
        _logger.info('RLNAS selected %s (angle %.6f rad).', best, angle)
        return dict(best)


class RLNAS(RankedOneShot, RandomOneShot):
    """RLNAS (Zhang et al., CVPR 2021) as a drop-in NNI one-shot strategy.

    Use it like any one-shot strategy: ``NasExperiment(space, evaluator, RLNAS()).run()`` then
    ``export_top_models()``. ``space`` is any NNI ``ModelSpace`` whose output comes from an ``nn.Linear``;
    ``evaluator`` is a usual ``Classification`` evaluator: its labels are replaced by random labels.

    Parameters
    ----------
    num_classes
        Number of random classes; defaults to the classifier's ``out_features`` (must match it if given).
    label_mode
        ``'uniform_once'`` (RLNAS default), ``'shuffle_once'``, ``'uniform_per_iteration'``,
        ``'shuffle_per_iteration'``; see :class:`~nni_labelfree.data.RandomLabelDataset`.
    seed
        Seeds the random labels, path sampling, shuffling (a pure function of seed and epoch, see
        :class:`EpochShuffleSampler`) and the evolutionary search.
    angle_policy
        :class:`~nni_labelfree.metrics.angle.AnglePolicy` (or its fields as a dict): which weights enter the vector
        and how parameter-free ops are represented, and whether each edge counts its own weights (``edges='own'``,
        RLNAS) or the mean over its cell's edges (``edges='cell_mean'``; needs ``cell_dags()`` and the path-aware
        angle, checked before training). Default: the space's ``angle_policy_defaults`` if it has them (DARTS:
        skip = ``eye(C)``), else RLNAS's NAS-Bench-201 choice.
    path_aware
        Path-aware angle (spaces with ``cell_dags()``) or per-candidate angle; ``None`` picks path-aware when
        the space supports it.
    search
        ``'exhaustive'`` ranks every architecture (cheap on NAS-Bench-201), ``'evolution'`` runs the evolutionary
        search, ``'auto'`` is exhaustive when the space has at most ``exhaustive_limit`` architectures and no
        constraint is set.
    evolution
        Keyword arguments of :func:`~nni_labelfree.selection.evolve` (population, top-k, generations, ...).
    constraint
        Optional ``callable(arch) -> bool`` (e.g. :class:`~nni_labelfree.selection.ProfilerConstraint`);
        architectures failing it are never selected.
    top_k
        How many ranked architectures to keep in the search result.
    filter
        Optional ``callable(sample) -> bool`` restricting the paths trained; defaults to the space's
        ``sample_filter`` if it has one (NAS-Bench-201: every node keeps an input that is not ``none``).
    channels_last
        Keep the supernet's 4-D weights and its images channels-last (default; :func:`.use_channels_last`): the same
        arithmetic in oneDNN's fastest CPU layout, about twice as fast here; ``False`` keeps PyTorch's default.

    Notes
    -----
    A space with a ``repair(sample, rng)`` hook (:class:`~nni_labelfree.search_spaces.DartsSpace`) has every
    training draw and every evolution candidate (random, mutant, crossover child) repaired, as RLNAS's
    ``check_cand``; mutation then draws from all ops, ``none`` included (RLNAS DARTS-CIFAR; unlike RLNAS, every
    gene may mutate, not only the normal cell's). Without the hook, invalid draws are rejected by ``filter``.
    """

    def __init__(self, *, num_classes: int | None = None, label_mode: str = 'uniform_once', seed: int = 0,
                 angle_policy: AnglePolicy | Mapping[str, str] | None = None, path_aware: bool | None = None,
                 search: str = 'auto', evolution: Mapping[str, Any] | None = None,
                 constraint: Callable[[dict], bool] | None = None, exhaustive_limit: int = 100_000,
                 top_k: int = 100, filter: Callable[[dict], bool] | None = None, channels_last: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(filter=filter, **kwargs)
        if search not in _SEARCH_MODES:
            raise ValueError(f'RLNAS: search={search!r} is not one of {_SEARCH_MODES}.')
        if search == 'exhaustive' and constraint is not None:
            raise ValueError('RLNAS: search="exhaustive" ignores constraints; use search="evolution" or "auto".')
        self.num_classes = num_classes
        self.label_mode = label_mode
        self.seed = int(seed)
        self._policy_given = angle_policy is not None
        self.angle_policy = angle_policy if isinstance(angle_policy, AnglePolicy) \
            else AnglePolicy(**(angle_policy or {}))
        self.repair: Callable[[dict, random.Random], dict] | None = None
        self.path_aware = path_aware
        self.search = search
        self.evolution = dict(evolution or {})
        self.constraint = constraint
        self.exhaustive_limit = exhaustive_limit
        self.top_k = top_k
        self.channels_last = bool(channels_last)
        self._module: RLNASModule | None = None

    # -- model and evaluator ------------------------------------------------------------------------------------
    def mutate_model(self, model: ModelSpace) -> ModelSpace:
        if not isinstance(model, ModelSpace):
            raise TypeError(f'RLNAS searches an NNI ModelSpace, got {type(model).__name__}.')
        if not model.simplify():
            raise ValueError(f'{type(model).__name__} has no LayerChoice/InputChoice: there is nothing to search.')
        out_features = _last_linear(model).out_features
        if self.num_classes is None:
            self.num_classes = out_features
        elif self.num_classes != out_features:
            raise ValueError(f'RLNAS: num_classes={self.num_classes} but the space\'s classifier has {out_features} '
                             'outputs. Build the space with num_classes equal to the random class count.')
        if self.filter is None and callable(getattr(model, 'sample_filter', None)):
            self.filter = model.sample_filter
        if callable(getattr(model, 'repair', None)):
            self.repair = model.repair
        defaults = getattr(model, 'angle_policy_defaults', None)
        if not self._policy_given and defaults:
            self.angle_policy = AnglePolicy(**defaults)
        check_policy_fits(model, self.angle_policy, self.path_aware)  # before training, not at export
        supernet = super().mutate_model(model)
        return use_channels_last(supernet) if self.channels_last else supernet

    def configure_oneshot_module(self, training_module) -> RLNASModule:
        self._module = RLNASModule(training_module, self)
        return self._module

    def _random_label_loader(self, loader: Any, shuffle: bool | None) -> DataLoader:
        if not isinstance(loader, DataLoader):
            raise TypeError(f'RLNAS needs a single torch DataLoader of training images, got {type(loader).__name__}.')
        if self.num_classes is None:
            raise RuntimeError('RLNAS: mutate_model() must run before the dataloaders are built.')
        dataset = RandomLabelDataset(loader.dataset, self.num_classes, mode=self.label_mode, seed=self.seed)
        shuffle = isinstance(loader.sampler, RandomSampler) if shuffle is None else shuffle
        sampler = EpochShuffleSampler(len(dataset), self.seed) if shuffle else SequentialSampler(dataset)
        if self._module is not None:
            self._module.label_datasets.append(dataset)
            if shuffle:
                self._module.shuffle_samplers.append(sampler)
        # No DataLoader generator: worker base seeds then come from the global torch RNG, which checkpoints restore.
        return DataLoader(dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                          drop_last=loader.drop_last, pin_memory=loader.pin_memory, persistent_workers=False)

    def train_dataloader(self, train_dataloader_fn, val_dataloader_fn) -> DataLoader:
        """The evaluator's training loader with random labels in place of its labels."""
        return self._random_label_loader(train_dataloader_fn(), shuffle=None)

    def val_dataloader(self, train_dataloader_fn, val_dataloader_fn) -> DataLoader:
        """The training images with the same random labels, unshuffled: validation measures memorisation.

        Random labels carry no information about held-out images, so fitting them on the training set is the only
        meaningful validation signal (RLNAS's supernet must memorise for the angle to mean anything).
        """
        return self._random_label_loader(train_dataloader_fn(), shuffle=False)

    # -- selection ----------------------------------------------------------------------------------------------
    def select(self, scorer) -> list[tuple[dict, float]]:
        """Rank architectures by angle: exhaustive or evolutionary, as configured; best first."""
        size = math.prod(len(v) for v in scorer.choices.values())
        exhaustive = self.search == 'exhaustive' or (
            self.search == 'auto' and self.constraint is None and size <= self.exhaustive_limit)
        if exhaustive:
            encoded = scorer.all_encodings(limit=max(self.exhaustive_limit, size))
            angles = scorer.angles(encoded)
            order = np.argsort(-angles, kind='stable')[:self.top_k]
            return [(scorer.decode(encoded[i]), float(angles[i])) for i in order]
        kwargs = {'seed': self.seed, 'repair': self.repair, **self.evolution}
        result = evolve(scorer.choices, scorer.angle, constraint=self.constraint, **kwargs)
        return [(plain_architecture(arch), float(fitness)) for arch, fitness in result.ranked[:self.top_k]]
