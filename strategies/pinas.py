"""Pi-NAS: a cross-path contrastive supernet with a non-trivial mean teacher, as an NNI one-shot strategy.

Reference: Jiefeng Peng, Jiqi Zhang, Changlin Li, Guangrun Wang, Xiaodan Liang, Liang Lin, "Pi-NAS: Improving
Neural Architecture Search by Reducing Supernet Training Consistency Shift", ICCV 2021.

One training step on a batch of augmented views (:class:`~nni_labelfree.data.views.ViewDataset`; labels never
read), in :class:`~.pinas_module.PiNASModule`:

1. two paths ``P_i, P_j`` that differ in every choice the space allows (:class:`.PathPairSampler`, seeded, the
   same on every DDP rank);
2. the student (supernet + 2-layer MLP head, :class:`.ContrastiveNetwork`) embeds view 1 through ``P_i`` and view 2
   through ``P_j``: unit queries ``q_i, q_j``;
3. the teacher, an EMA copy never touched by gradients, is updated on the modules ``P_i`` ran
   (:class:`.PathwiseEMA`, momentum 0.999) and gives the key ``k_i = T(view 1; P_i)``; then the same for ``P_j``;
4. cross-path InfoNCE (Eq. 4): ``q_i`` against ``k_j`` and ``q_j`` against ``k_i`` (keys from the other path and
   view), each with a first-in first-out queue of earlier keys as negatives (temperature 0.2, 49152 keys), the two
   terms summed; the unnormalised mean ``(k_i + k_j) / 2`` is enqueued, gathered over DDP ranks.

With four views per image (``num_views=4``, the released code) the keys come from views 3 and 4 instead.
Ablations (Table 7): ``cross_path=False`` pairs each query with the key of its own path on the other view;
``mean_teacher=False`` takes the keys from the student itself without gradient (the "S-Pi model");
``negatives=False`` drops the queue and minimises Eq. 1 alone, which collapses, and :class:`.CollapseMonitor` says
so. Selection: linear evaluation on the frozen supernet when the evaluator's images carry labels, else the
label-free held-out contrastive loss (:mod:`nni_labelfree.selection.linear_eval`), ranked exhaustively or by the
shared evolutionary search.

Deviations from the paper: the optimiser is the evaluator's (the paper: SGD lr 0.03, momentum 0.9, weight decay
1e-4, cosine, 100 epochs: pass them to ``Classification``); MoCo's shuffle-BN (keys normalised over a shuffled
batch spread across GPUs) is emulated inside each process by normalising the keys over ``key_bn_groups`` random
sub-batches; the search is evolutionary, not LaNAS/LightGBM; the classifier of the linear evaluation is trained on
un-augmented images; views are 32x32-scaled (:class:`~nni_labelfree.data.views.ViewConfig`).
"""
from __future__ import annotations

import logging
import math
import random
from typing import Any, Callable, Mapping, Sequence

from torch.utils.data import DataLoader

from nni.nas.nn.pytorch import ModelSpace
from nni.nas.oneshot.pytorch.strategy import RandomOneShot

from nni_labelfree.data import CIFAR10_MEAN, CIFAR10_STD, EpochShuffleSampler, derive_seed
from nni_labelfree.data.views import ViewConfig, ViewDataset
from nni_labelfree.heads import final_linear
from nni_labelfree.selection import space_choices
from nni_labelfree.selection.linear_eval import select_architectures

from .common import RankedOneShot
from .pinas_module import QUEUE_PRECISIONS, STREAMS, TEACHER_PRECISIONS, PiNASModule
from .pinas_parts import ContrastiveNetwork, count_paths

__all__ = ['PiNAS', 'PiNASModule', 'PINAS_DEFAULTS']

_logger = logging.getLogger(__name__)

_SELECTIONS = ('auto', 'linear_eval', 'label_free')
PINAS_DEFAULTS = {'temperature': 0.2, 'queue_size': 49152, 'momentum': 0.999, 'embedding_dim': 128}
"""The paper's values (MoCo v2 head and loss): InfoNCE temperature, queue length, EMA momentum, head output."""


class PiNAS(RankedOneShot, RandomOneShot):
    """Pi-NAS (Peng et al., ICCV 2021) as a drop-in NNI one-shot strategy.

    ``NasExperiment(space, evaluator, PiNAS()).run()`` on any NNI ``ModelSpace`` with an ``nn.Linear`` classifier
    at the end: the evaluator's training images are turned into augmented views and train the supernet without
    labels; labels, if the evaluator has them, are used only to select (linear evaluation).

    Parameters
    ----------
    seed
        Seeds path sampling, views, shuffling (a function of seed and epoch), the queue, the head and selection.
    temperature, queue_size, momentum, embedding_dim
        InfoNCE temperature, number of queued keys, teacher EMA momentum, head output (paper: 0.2, 49152, 0.999,
        128). A batch need not divide ``queue_size`` (writes wrap around), but must not exceed it. The EMA runs
        before every batch's keys (the paper's order), so with gradient accumulation over ``k`` batches the teacher
        takes ``k`` steps towards the same student weights per optimiser step (an effective momentum ``m**k``).
    hidden_dim
        Hidden width of the projection head (default: the feature width, as Pi-NAS).
    num_views
        2 (the paper's equations) or 4 (its code: separate views for the keys).
    cross_path, mean_teacher, negatives
        Ablation switches of Table 7 (all on: Pi-NAS).
    key_bn_groups
        The teacher normalises each batch of keys over this many random sub-batches (shuffle-BN on one process, so
        a positive cannot be recognised by batch statistics it shares with its query); 1 turns it off.
    collapse_threshold, collapse_patience, stop_on_collapse
        A collapse is reported (warning, ``collapsed`` metric) when the embedding spread stays below the threshold
        for ``patience`` steps; ``stop_on_collapse`` also ends training.
    views, view_stats
        The augmentation (:class:`~nni_labelfree.data.views.ViewConfig`, default Pi-NAS's at the image size) and the
        ``(mean, std)`` the evaluator's images are normalised with (``(None, None)``: images in ``[0, 1]``).
    selection
        ``'auto'`` (linear evaluation when labels exist, else label-free), ``'linear_eval'`` or ``'label_free'``.
    linear_eval
        Keyword arguments of :class:`~nni_labelfree.selection.LinearEvaluator` (steps, learning_rate, bn_batches,
        ...), plus ``epoch_steps`` for the per-epoch metric.
    linear_eval_every
        Also measure the linear-evaluation accuracy of the probe paths every that many epochs (0: never).
    held_out_images, probe_images
        Images for the label-free criterion and for the cross-path similarity: the first ones of the evaluator's
        validation loader (of its training loader when it has none).
    search, evolution, constraint, exhaustive_limit, top_k
        Ranking: exhaustive when the space has at most ``exhaustive_limit`` architectures and no constraint (or
        ``search='exhaustive'``), else :func:`~nni_labelfree.selection.evolve` with ``evolution`` keyword arguments.
    filter
        Optional ``callable(sample) -> bool`` restricting the paths trained; default the space's ``sample_filter``.
    channels_last
        Keep the supernet's 4-D weights and the images channels-last (default): the same arithmetic in oneDNN's
        fastest layout on CPUs (a NAS-Bench-201 step about twice as fast here); ``False`` keeps PyTorch's default.
    teacher_precision
        Precision of the teacher's key passes: ``'float32'`` (default) or ``'bfloat16'`` / ``'float16'`` autocast
        (the paper trains in fp16). The EMA weights stay float32 and the keys come out in float32; only the
        teacher's convolutions and linear layers run in reduced precision. On this project's AVX512-BF16 CPU that
        made a NAS-Bench-201 step 7% faster (README, speed table); ``'float16'`` is meant for GPUs.
    queue_precision
        Storage precision of the queue and of the work over all its keys: ``'float32'`` (default) or
        ``'bfloat16'``, which stores the keys in bfloat16 and computes the negatives' ``[N, K]`` logits, their
        shift by the row maximum, their exponentials and the backward product with the queue in bfloat16; the
        row sums, the log-sum-exp, the positives and every gradient reaching the network stay float32. At the
        paper's 49152 keys this work is a large part of a small supernet's step: on this AVX512-BF16 CPU a
        NAS-Bench-201 step (C=16, N=1) ran 9% faster (384 vs 422 ms; README, speed table).
    """

    def __init__(self, *, seed: int = 0, temperature: float = 0.2, queue_size: int = 49152, momentum: float = 0.999,
                 embedding_dim: int = 128, hidden_dim: int | None = None, num_views: int = 2,
                 cross_path: bool = True, mean_teacher: bool = True, negatives: bool = True, key_bn_groups: int = 2,
                 collapse_threshold: float = 0.05, collapse_patience: int = 20, stop_on_collapse: bool = False,
                 views: ViewConfig | None = None,
                 view_stats: tuple[Sequence[float] | None, Sequence[float] | None] = (CIFAR10_MEAN, CIFAR10_STD),
                 selection: str = 'auto', linear_eval: Mapping[str, Any] | None = None, linear_eval_every: int = 0,
                 held_out_images: int = 256, probe_images: int = 64, search: str = 'auto',
                 evolution: Mapping[str, Any] | None = None, constraint: Callable[[dict], bool] | None = None,
                 exhaustive_limit: int = 256, top_k: int = 10, filter: Callable[[dict], bool] | None = None,
                 channels_last: bool = True, teacher_precision: str = 'float32', queue_precision: str = 'float32',
                 **kwargs: Any) -> None:
        super().__init__(filter=filter, **kwargs)
        _check_settings(temperature, queue_size, momentum, embedding_dim, num_views, selection, search)
        derive_seed(seed)
        self.seed, self.temperature, self.queue_size = int(seed), float(temperature), int(queue_size)
        self.momentum, self.embedding_dim, self.hidden_dim = float(momentum), int(embedding_dim), hidden_dim
        self.num_views, self.cross_path = int(num_views), bool(cross_path)
        if not isinstance(key_bn_groups, int) or key_bn_groups < 1:
            raise ValueError('key_bn_groups must be a positive integer (1 turns shuffle-BN off), got '
                             f'{key_bn_groups!r}.')
        self.key_bn_groups = key_bn_groups
        self.mean_teacher, self.negatives = bool(mean_teacher), bool(negatives)
        self.collapse_threshold, self.collapse_patience = float(collapse_threshold), int(collapse_patience)
        self.stop_on_collapse, self.views, self.view_stats = bool(stop_on_collapse), views, tuple(view_stats)
        self.selection, self.linear_eval = selection, dict(linear_eval or {})
        self.linear_eval_every, self.held_out_images = int(linear_eval_every), int(held_out_images)
        self.probe_images, self.search, self.evolution = int(probe_images), search, dict(evolution or {})
        self.constraint, self.exhaustive_limit, self.top_k = constraint, int(exhaustive_limit), int(top_k)
        self.repair: Callable[[dict, random.Random], dict] | None = None
        self.channels_last = bool(channels_last)
        if teacher_precision not in TEACHER_PRECISIONS:
            raise ValueError(f'teacher_precision={teacher_precision!r} is not one of {tuple(TEACHER_PRECISIONS)}; '
                             "'float32' is the default, 'bfloat16' speeds up the key passes on CPUs.")
        self.teacher_precision = teacher_precision
        if queue_precision not in QUEUE_PRECISIONS:
            raise ValueError(f'queue_precision={queue_precision!r} is not one of {tuple(QUEUE_PRECISIONS)}; '
                             "'float32' is the default, 'bfloat16' speeds up the products with the queue on CPUs.")
        self.queue_precision = queue_precision
        self.batch_size: int | None = None
        self._module: PiNASModule | None = None

    # -- model and evaluator --------------------------------------------------------------------------------------
    def mutate_model(self, model: ModelSpace) -> ContrastiveNetwork:
        """The one-shot supernet of ``model`` wrapped in a :class:`.ContrastiveNetwork` (projection head)."""
        if not isinstance(model, ModelSpace):
            raise TypeError(f'PiNAS searches an NNI ModelSpace, got {type(model).__name__}.')
        paths = count_paths(model.simplify())
        if paths < 2:
            raise ValueError(f'PiNAS trains two different paths per step, but {type(model).__name__} has {paths} '
                             'architecture(s). Give the space a LayerChoice/InputChoice with at least two candidates.')
        final_linear(model)  # a clear error for spaces without a linear classifier
        if self.filter is None and callable(getattr(model, 'sample_filter', None)):
            self.filter = model.sample_filter
        if callable(getattr(model, 'repair', None)):
            self.repair = model.repair
        supernet = super().mutate_model(model)
        return ContrastiveNetwork(supernet, self.embedding_dim, self.hidden_dim,
                                  seed=derive_seed(self.seed, STREAMS['head']), channels_last=self.channels_last)

    def configure_oneshot_module(self, training_module) -> PiNASModule:
        self._module = PiNASModule(training_module, self)
        return self._module

    def train_dataloader(self, train_dataloader_fn, val_dataloader_fn) -> DataLoader:
        """The evaluator's training images as batches of views, reshuffled per epoch as a function of the seed."""
        loader = train_dataloader_fn()
        if not isinstance(loader, DataLoader):
            raise TypeError(f'PiNAS needs a single torch DataLoader of training images, got {type(loader).__name__}.')
        batch = int(loader.batch_size or 0)
        if batch < 2:
            raise ValueError(f'PiNAS needs batches of at least 2 images, got batch_size={loader.batch_size}.')
        if self.negatives and batch > self.queue_size:
            raise ValueError(f'queue_size={self.queue_size} is smaller than the batch of {batch} keys enqueued per '
                             'step. Raise queue_size (ideally to a multiple of the global batch) or lower batch_size.')
        base = loader.dataset
        dataset = base if isinstance(base, ViewDataset) else ViewDataset(
            base, self.num_views, seed=derive_seed(self.seed, STREAMS['views']), config=self.views,
            mean=self.view_stats[0], std=self.view_stats[1])
        if len(dataset) < batch:
            raise ValueError(f'PiNAS drops incomplete batches, and {len(dataset)} images give none of {batch}; use '
                             'more images or a smaller batch size.')
        if self.negatives and self.queue_size >= len(dataset) // 2:
            _logger.warning('PiNAS: queue_size=%d keys for %d training images: each image\'s own earlier key sits in '
                            'the queue as a negative most of the time, and a queue of half the images kept the '
                            'contrastive loss near chance here (README, Pi-NAS quality). About 8%% of the images '
                            '(MoCo on CIFAR-10: 4096 of 50,000), in whole batches, learned better.',
                            self.queue_size, len(dataset))
        sampler = EpochShuffleSampler(len(dataset), self.seed)
        self.batch_size = batch
        if self._module is not None:
            self._module.view_datasets.append(dataset)
            self._module.shuffle_samplers.append(sampler)
            self._module.train_base = base.base if isinstance(base, ViewDataset) else base
        return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True, num_workers=loader.num_workers,
                          pin_memory=loader.pin_memory, persistent_workers=False)

    def val_dataloader(self, train_dataloader_fn, val_dataloader_fn) -> None:
        """No validation loop: the evaluator's validation images serve the selection and the probes instead."""
        loader = val_dataloader_fn()
        loader = loader[0] if isinstance(loader, (list, tuple)) and loader else loader
        if self._module is not None and isinstance(loader, DataLoader):
            dataset = loader.dataset
            self._module.val_base = dataset.base if isinstance(dataset, ViewDataset) else dataset
        return None

    # -- selection ------------------------------------------------------------------------------------------------
    def select(self, module: PiNASModule) -> list[tuple[dict, float]]:
        """Rank architectures by the module's selection fitness (linear-eval accuracy or label-free), best first."""
        fitness, kind = module.selection_fitness()
        choices = space_choices(module.network)
        size = math.prod(len(v) for v in choices.values())
        limit = size if self.search == 'exhaustive' else (0 if self.search == 'evolution' else self.exhaustive_limit)
        ranked = select_architectures(fitness, choices, constraint=self.constraint, repair=self.repair,
                                      seed=self.seed, exhaustive_limit=limit, evolution=self.evolution,
                                      top_k=self.top_k)
        _logger.info('PiNAS selected %s by %s (fitness %.4f).', ranked[0][0], kind, ranked[0][1])
        module.selection_kind = kind
        return ranked


def _check_settings(temperature: float, queue_size: int, momentum: float, embedding_dim: int, num_views: int,
                    selection: str, search: str) -> None:
    if not temperature > 0:
        raise ValueError(f'temperature must be > 0 (Pi-NAS: 0.2), got {temperature!r}.')
    if not isinstance(queue_size, int) or queue_size < 1:
        raise ValueError(f'queue_size must be a positive integer (Pi-NAS: 49152), got {queue_size!r}.')
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f'momentum must lie in [0, 1] (Pi-NAS: 0.999), got {momentum!r}.')
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f'embedding_dim must be a positive integer (Pi-NAS: 128), got {embedding_dim!r}.')
    if num_views not in (2, 4):
        raise ValueError(f'num_views must be 2 (the paper\'s equations) or 4 (its code), got {num_views!r}.')
    if selection not in _SELECTIONS:
        raise ValueError(f'selection={selection!r} is not one of {_SELECTIONS}.')
    if search not in ('auto', 'exhaustive', 'evolution'):
        raise ValueError(f"search={search!r} is not one of ('auto', 'exhaustive', 'evolution').")
