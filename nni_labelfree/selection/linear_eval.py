"""Linear-evaluation search on a frozen weight-sharing supernet (Pi-NAS), and a label-free alternative.

Reference: Jiefeng Peng, Jiqi Zhang, Changlin Li, Guangrun Wang, Xiaodan Liang, Liang Lin, "Pi-NAS: Improving
Neural Architecture Search by Reducing Supernet Training Consistency Shift", ICCV 2021, section 3.3 and 4.1:

1. one linear classifier is trained on top of the frozen supernet, a uniformly random path per batch, with
   BatchNorm using each batch's statistics (:class:`LinearEvaluator`, :meth:`~LinearEvaluator.fit`);
2. a candidate's score is its top-1 accuracy on held-out labeled images after its BN statistics are recalibrated
   on a few training batches (:meth:`~LinearEvaluator.accuracy`; Pi-NAS averages 49 batches, BN momentum 1);
3. the best candidate is searched with :func:`select_architectures`: exhaustively for small spaces, else by the
   shared evolutionary search :func:`~nni_labelfree.selection.evolve` (a deviation: the paper uses a LaNAS-style
   space-partitioning searcher with LightGBM, 1000 samples).

Labels are used only here. Users without labels get :class:`HeldOutContrastive`: the candidate's own contrastive
(instance-discrimination) loss on two fixed augmented views of held-out images. Nothing in this module changes the
supernet: parameters are never updated and every BatchNorm buffer and train/eval mode is restored afterwards.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from .evolution import evolve

__all__ = ['activate_path', 'batch_statistics', 'recalibrated_bn', 'uniform_arch_sampler', 'LinearEvaluator',
           'HeldOutContrastive', 'select_architectures']

_logger = logging.getLogger(__name__)

Arch = dict


def activate_path(model: nn.Module, arch: Mapping[str, Any]) -> None:
    """Route every path-sampling module of a one-shot supernet through ``arch``."""
    memo = dict(arch)
    for module in model.modules():
        if isinstance(module, BaseSuperNetModule):
            module.resample(memo=memo)


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[list[_BatchNorm]]:
    """Restore every module's train/eval mode and every BN's buffers and momentum when the block ends."""
    modes = [(m, m.training) for m in model.modules()]
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [(m.momentum, {k: None if b is None else b.detach().clone() for k, b in m.named_buffers(recurse=False)})
             for m in norms]
    try:
        yield norms
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for module, (momentum, buffers) in zip(norms, saved):
                module.momentum = momentum
                for name, value in buffers.items():
                    if value is not None:
                        getattr(module, name).copy_(value)


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Evaluation mode except BatchNorm, which normalises with each batch's own statistics; state restored."""
    with _restored(model) as norms:
        model.eval()
        for norm in norms:
            norm.train()
        yield


@contextlib.contextmanager
def recalibrated_bn(model: nn.Module, forward: Callable[[torch.Tensor], Any],
                    batches: Iterable[torch.Tensor]) -> Iterator[None]:
    """Evaluation mode with BN running statistics re-estimated on ``batches`` through ``forward``; state restored.

    The running mean and variance are reset and averaged over the batches (momentum ``None``: a cumulative
    average, Pi-NAS's ``update_bn_stats``), so they describe the currently activated path only.
    """
    with _restored(model) as norms:
        model.eval()
        for norm in norms:
            norm.train()
            norm.momentum = None
            if norm.track_running_stats:
                norm.reset_running_stats()
        with torch.no_grad():
            for inputs in batches:
                forward(inputs)
        for norm in norms:
            norm.eval()
        yield


def uniform_arch_sampler(choices: Mapping[str, Sequence], seed: int = 0,
                         filter: Callable[[dict], bool] | None = None,
                         repair: Callable[[dict, random.Random], dict] | None = None) -> Callable[[], Arch]:
    """A seeded callable drawing uniform architectures from ``choices`` (repaired, then filtered)."""
    rng = random.Random(seed)
    labels = {label: list(values) for label, values in choices.items()}

    def draw() -> Arch:
        for _ in range(1000):
            arch = {label: rng.choice(values) for label, values in labels.items()}
            arch = repair(arch, rng) if repair is not None else arch
            if filter is None or filter(arch):
                return arch
        raise RuntimeError('No architecture passed the filter in 1000 uniform draws; check the filter.')
    return draw


def _labeled(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError('Linear evaluation needs (image, label) batches; got unlabeled ones. Pass labeled loaders, '
                         'or select with the label-free criterion (HeldOutContrastive).')
    images, labels = batch[0], torch.as_tensor(batch[1])
    if bool((labels < 0).any()):
        raise ValueError('Linear evaluation needs true labels, but the data has label -1 (unlabeled images). Use a '
                         'labeled source (e.g. cifar10, or an image folder with class subfolders) or the label-free '
                         'criterion (HeldOutContrastive).')
    return images, labels.long()


class LinearEvaluator:
    """Pi-NAS's linear evaluation: one linear classifier on a frozen supernet, then per-candidate accuracy.

    Parameters
    ----------
    supernet
        The one-shot supernet (any module whose path-sampling modules :func:`activate_path` routes).
    embed
        ``images -> features [N, D]`` of the activated path (e.g. ``ContrastiveNetwork.embed``).
    train_loader, val_loader
        Iterables of ``(images, labels)``: the classifier is trained on the first, candidates are scored on the
        second. The first ``bn_batches`` training batches also recalibrate BN per candidate.
    sample_arch
        Callable drawing the random path of each classifier step (e.g. :func:`uniform_arch_sampler`).
    num_classes
        Classifier outputs.
    seed
        Seeds the classifier's initialisation.
    steps, learning_rate, momentum, weight_decay
        SGD of the classifier, with a cosine schedule over ``steps`` (Pi-NAS: lr 30 on ImageNet MoCo features;
        our features are BN-normalised, so the default is far smaller).
    bn_batches
        Training batches used to recalibrate BN for each candidate.
    max_val_batches
        Cap on the validation batches kept (all by default).
    """

    def __init__(self, supernet: nn.Module, embed: Callable[[torch.Tensor], torch.Tensor],
                 train_loader: Iterable, val_loader: Iterable, *, sample_arch: Callable[[], Arch], num_classes: int,
                 seed: int = 0, steps: int = 200, learning_rate: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 0.0, bn_batches: int = 4, max_val_batches: int | None = None):
        if steps < 1 or bn_batches < 1 or num_classes < 2:
            raise ValueError(f'LinearEvaluator needs steps >= 1, bn_batches >= 1 and num_classes >= 2; got '
                             f'{steps}, {bn_batches}, {num_classes}.')
        self.supernet, self.embed, self.sample_arch = supernet, embed, sample_arch
        self.train_loader, self.val_loader = train_loader, val_loader
        self.num_classes, self.seed, self.steps = int(num_classes), int(seed), int(steps)
        self.optim = dict(lr=learning_rate, momentum=momentum, weight_decay=weight_decay)
        self.bn_batches, self.max_val_batches = int(bn_batches), max_val_batches
        self.classifier: nn.Linear | None = None
        self.losses: list[float] = []
        self._bn_inputs: list[torch.Tensor] | None = None
        self._val: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _device(self) -> torch.device:
        return next(self.supernet.parameters()).device

    def _check_labels(self, labels: torch.Tensor) -> None:
        if bool((labels >= self.num_classes).any()):
            raise ValueError(f'Label {int(labels.max())} is out of range for num_classes={self.num_classes}; pass '
                             'the number of classes of the labeled data.')

    def _training_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            count = 0
            for batch in self.train_loader:
                count += 1
                yield _labeled(batch)
            if count == 0:
                raise ValueError('The linear-evaluation training loader is empty; give it at least one batch.')

    def fit(self) -> list[float]:
        """Train the classifier (random path per step, BN on batch statistics); returns the per-step losses."""
        device = self._device()
        batches = self._training_batches()
        with batch_statistics(self.supernet):
            images, labels = next(batches)
            with torch.no_grad():
                activate_path(self.supernet, self.sample_arch())
                dim = self.embed(images.to(device)).shape[1]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.classifier = nn.Linear(dim, self.num_classes).to(device)
            optimizer = torch.optim.SGD(self.classifier.parameters(), **self.optim)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.steps)
            self.losses = []
            for step in range(self.steps):
                if step > 0:
                    images, labels = next(batches)
                self._check_labels(labels)
                with torch.no_grad():
                    activate_path(self.supernet, self.sample_arch())
                    features = self.embed(images.to(device))
                loss = F.cross_entropy(self.classifier(features), labels.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                self.losses.append(float(loss.detach()))
        return self.losses

    def _cached_data(self) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        if self._bn_inputs is None:
            batches = self._training_batches()
            self._bn_inputs = [next(batches)[0] for _ in range(self.bn_batches)]
            val = (_labeled(b) for b in self.val_loader)
            self._val = list(itertools.islice(val, self.max_val_batches))
            if not self._val:
                raise ValueError('The linear-evaluation validation loader is empty; give it at least one batch.')
        return self._bn_inputs, self._val

    @torch.no_grad()
    def accuracy(self, arch: Mapping[str, Any]) -> float:
        """Top-1 accuracy of ``arch`` on the validation data after recalibrating its BN statistics."""
        if self.classifier is None:
            raise RuntimeError('LinearEvaluator: call fit() before scoring architectures.')
        device = self._device()
        bn_inputs, val = self._cached_data()
        activate_path(self.supernet, arch)
        correct = total = 0
        with recalibrated_bn(self.supernet, lambda x: self.embed(x.to(device)), bn_inputs):
            for images, labels in val:
                self._check_labels(labels)
                predictions = self.classifier(self.embed(images.to(device))).argmax(1).cpu()
                correct += int((predictions == labels).sum())
                total += len(labels)
        return correct / total

    def __call__(self, arch: Mapping[str, Any]) -> float:
        return self.accuracy(arch)


class HeldOutContrastive:
    """Label-free fitness: a candidate's contrastive loss on two fixed augmented views of held-out images.

    For candidate ``a`` both views of every held-out image go through ``a`` (BN recalibrated on those views), the
    unit embeddings ``z1, z2`` are compared all-against-all, and the fitness is minus the symmetric InfoNCE loss
    ``-(CE(z1 z2^T / t, I) + CE(z2 z1^T / t, I)) / 2``; :meth:`scores` also gives the retrieval accuracy (how often
    an image's other view is its nearest neighbour). Why this and not teacher-student cross-path consistency:
    consistency alone is maximised by a collapsed supernet that maps everything to one vector, so it cannot rank;
    discrimination among held-out images needs features that are both invariant to the augmentation and distinct
    per image, the property the supernet was trained for, and it is measured on images the supernet never saw,
    without the queue or the teacher, so each candidate is judged by its own weights only.

    Parameters
    ----------
    supernet
        The one-shot supernet.
    project
        ``images -> embeddings [N, E]`` of the activated path (e.g. ``ContrastiveNetwork.forward``).
    views
        ``[N, 2, C, H, W]``: two fixed views per held-out image (e.g. from ``ViewDataset``), ``N >= 2``.
    temperature
        InfoNCE temperature (Pi-NAS: 0.2).
    batch_size
        Images per forward pass (and per BN-recalibration batch).
    """

    def __init__(self, supernet: nn.Module, project: Callable[[torch.Tensor], torch.Tensor], views: torch.Tensor, *,
                 temperature: float = 0.2, batch_size: int = 128):
        if views.dim() != 5 or views.shape[1] < 2 or len(views) < 2:
            raise ValueError(f'HeldOutContrastive needs views [N >= 2, 2, C, H, W], got {tuple(views.shape)}.')
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}.')
        self.supernet, self.project, self.views = supernet, project, views[:, :2]
        self.temperature, self.batch_size = float(temperature), int(batch_size)

    def _batches(self) -> list[torch.Tensor]:
        flat = self.views.transpose(0, 1).reshape(-1, *self.views.shape[2:])
        return list(flat.split(self.batch_size))

    @torch.no_grad()
    def scores(self, arch: Mapping[str, Any]) -> dict[str, float]:
        """``{'loss', 'accuracy'}`` of ``arch`` on the held-out views."""
        device = next(self.supernet.parameters()).device
        activate_path(self.supernet, arch)
        batches = self._batches()
        with recalibrated_bn(self.supernet, lambda x: self.project(x.to(device)), batches):
            embeddings = F.normalize(torch.cat([self.project(b.to(device)) for b in batches]).float(), dim=1)
        first, second = embeddings.chunk(2)
        logits = first @ second.t() / self.temperature
        target = torch.arange(len(first), device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        hits = (logits.argmax(1) == target).float().mean() + (logits.argmax(0) == target).float().mean()
        accuracy = 0.5 * float(hits)
        return {'loss': float(loss), 'accuracy': accuracy}

    def __call__(self, arch: Mapping[str, Any]) -> float:
        loss = self.scores(arch)['loss']
        return -loss if math.isfinite(loss) else float('-inf')


def select_architectures(fitness: Callable[[Arch], float], choices: Mapping[str, Sequence], *,
                         constraint: Callable[[Arch], bool] | None = None,
                         repair: Callable[[dict, random.Random], dict] | None = None, seed: int = 0,
                         exhaustive_limit: int = 0, evolution: Mapping[str, Any] | None = None,
                         top_k: int = 10) -> list[tuple[Arch, float]]:
    """Rank architectures by ``fitness``, best first: every one when the space has at most ``exhaustive_limit``
    architectures and no constraint, else by :func:`~nni_labelfree.selection.evolve` (``evolution`` = its keyword
    arguments). Returns at most ``top_k`` ``(arch, fitness)`` pairs."""
    size = math.prod(len(v) for v in choices.values())
    if constraint is None and size <= exhaustive_limit:
        labels = list(choices)
        archs = [dict(zip(labels, values)) for values in itertools.product(*(choices[k] for k in labels))]
        if repair is not None:
            rng = random.Random(seed)
            unique = {tuple(sorted(a.items(), key=str)): a for a in (repair(dict(a), rng) for a in archs)}
            archs = list(unique.values())
        scores = np.array([fitness(dict(a)) for a in archs], dtype=float)
        order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind='stable')[:top_k]
        return [(archs[i], float(scores[i])) for i in order]
    result = evolve(choices, fitness, constraint=constraint, repair=repair, seed=seed, **dict(evolution or {}))
    return [(dict(a), float(f)) for a, f in result.ranked[:top_k]]
