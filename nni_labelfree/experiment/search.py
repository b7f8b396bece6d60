"""One label-free search, from a :class:`SearchConfig` to an exported architecture and its artifacts.

Used by ``nni-labelfree search`` (no NNI manager) and by the nnictl trial entry point (:mod:`.trial`), which passes
a ``reporter`` forwarding per-epoch metrics to the web UI. The strategy is driven directly
(``mutate_model`` / ``mutate_evaluator`` / ``evaluate``) rather than through ``NasExperiment``, which must not run
inside an nnictl trial (nni3.md, pitfall 5).

Resume: every epoch ends with a Lightning checkpoint of the whole search in ``checkpoints/search_epoch{N}.ckpt``
(:mod:`.checkpoint`; the last two are kept). Rerunning the same command with the same output folder continues from
the newest readable one and ends with the same architecture, angles and metrics as an uninterrupted run; a
checkpoint written with other settings is refused. ``resume=false`` starts over.

DDP (``lightning_strategy='ddp'``, ``devices=N``): Lightning relaunches the command once per extra rank; each rank
runs this function, trains the same paths on its shard of the data, and exports; only rank 0 writes files (so
``metrics.json`` holds rank 0's loss and accuracy, measured on its shard).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from nni_labelfree.benchmarks.nasbench201 import NB201_LABELS, arch_to_string, load_nb201_table
from nni_labelfree.data import labeled_image_source, split_held_out
from nni_labelfree.experiment.checkpoint import (AtomicCheckpointIO, ResumableCheckpoint, atomic_save,
                                                 changed_settings, checkpoint_metadata, resume_candidate)
from nni_labelfree.experiment.config import SearchConfig
from nni_labelfree.experiment.evaluator import sgd_classification
from nni_labelfree.experiment.history import EpochHistory
from nni_labelfree.metrics.angle import AnglePolicy
from nni_labelfree.metrics.correlation import kendall_tau
from nni_labelfree.search_spaces import create_space
from nni_labelfree.strategies import SGAS, PiNAS, RLNAS, UnNAS, UnrealNAS
from nni_labelfree.strategies.unnas import count_skip_connections

__all__ = ['run_search', 'build_search', 'SearchParts', 'with_keys_added_later', 'build_images',
           'SearchMetricsCallback', 'atomic_save', 'process_rank']

_logger = logging.getLogger(__name__)

Reporter = Callable[[dict], None]


# Settings that may change between an interrupted run and its resumption without changing the result.
_RESUME_FREE_KEYS = frozenset({'output_dir', 'resume', 'num_threads', 'num_workers', 'max_minutes',
                               'checkpoint_every', 'channels_last'})  # memory layout: the same weights either way
_KEEP_CHECKPOINTS = 2


def process_rank() -> int:
    """This process's global rank: 0 unless Lightning launched it as another DDP rank (it sets the env vars)."""
    for name in ('RANK', 'LOCAL_RANK', 'SLURM_PROCID'):
        if os.environ.get(name, '').isdigit():
            return int(os.environ[name])
    return 0


def build_images(config: SearchConfig) -> Dataset:
    """The configured image source, with true labels where the data has them (an image folder's class
    subfolders). Only SGAS, UnNAS's supervised control and Pi-NAS's linear evaluation read them."""
    images = labeled_image_source(config.data, root=config.data_root, split=config.data_split,
                                  download=config.download, num_images=config.num_images, seed=config.seed,
                                  image_size=config.image_size)
    if _needs_true_labels(config):
        _check_true_labels(config, images)
    return images


def _needs_true_labels(config: SearchConfig) -> bool:
    return config.strategy == 'sgas' or (config.strategy == 'unnas' and config.task == 'supervised')


def _check_true_labels(config: SearchConfig, images: Dataset) -> None:
    classes = getattr(images, 'num_true_classes', None)
    who = 'SGAS' if config.strategy == 'sgas' else "UnNAS's supervised control"
    if not classes:
        raise ValueError(f'{who} searches with true labels, but data={config.data!r} has none. Use cifar10/cifar100, '
                         'an imagefolder with one subfolder per class, or a label-free strategy (unrealnas for random '
                         'labels, unnas with a pretext task).')
    if config.strategy == 'sgas' and classes != config.num_classes:  # UnNAS sizes its head from the data
        raise ValueError(f'The images carry {classes} classes but num_classes={config.num_classes}; set '
                         f'num_classes={classes}.')


def search_num_classes(config: SearchConfig, num_images: int) -> int:
    """Outputs of the space's classifier: UnrealNAS's random classes (``unreal_classes``, or the paper's count scaled
    to the images), else ``num_classes``."""
    if config.strategy != 'unrealnas':
        return config.num_classes
    if config.unreal_classes is not None:
        return config.unreal_classes
    from nni_labelfree.data import default_num_classes
    return default_num_classes(config.unreal_data, num_images)


def _build_space(config: SearchConfig, num_classes: int) -> torch.nn.Module:
    in_channels = 1 if config.strategy == 'unnas' and config.task == 'colorization' else 3
    if config.space == 'darts':
        # RLNAS's DARTS supernet builds every op with affine BN (methods.md 1.3); DARTS/UnNAS search nets do not.
        return create_space('darts', width=config.channels, num_cells=config.num_cells,
                            num_classes=num_classes, in_channels=in_channels,
                            affine=config.strategy == 'rlnas')
    if config.space == 'mobilenet':
        # channels = the first block's width (RLNAS: 24), cells_per_stage = choice blocks per stage (RLNAS: 4; the
        # last stage always has 1); images up to 64 px get the CIFAR stem (8x downsampling), larger ones ImageNet's.
        # Below full width, widths round to multiples of 4 rather than 8 so that small supernets stay small.
        from nni_labelfree.search_spaces.mobilenet import RLNAS_WIDTHS
        return create_space('mobilenet', width_mult=config.channels / RLNAS_WIDTHS[1],
                            stage_depths=(config.cells_per_stage,) * 5 + (1,), num_classes=num_classes,
                            in_channels=in_channels, stem='cifar' if config.image_size <= 64 else 'imagenet',
                            channel_divisor=8 if config.channels >= RLNAS_WIDTHS[1] else 4)
    if config.space == 'resnest':
        # channels = the first stage's bottleneck width (ResNeSt-50: 64); stage_depths = blocks per stage (Pi-NAS:
        # 3, 4, 6, 3), or cells_per_stage blocks in every stage when it is null.
        depths = tuple(config.stage_depths) if config.stage_depths is not None else (config.cells_per_stage,) * 4
        return create_space('resnest', base_width=config.channels, depths=depths,
                            num_classes=num_classes, in_channels=in_channels,
                            stem='cifar' if config.image_size <= 64 else 'imagenet')
    return create_space(config.space, channels=config.channels, cells_per_stage=config.cells_per_stage,
                        num_classes=num_classes, in_channels=in_channels)


def _profiler_constraint(config: SearchConfig, space: torch.nn.Module):
    if config.max_flops is None and config.max_params is None:
        return None
    from nni_labelfree.selection import ProfilerConstraint
    return ProfilerConstraint(space, torch.randn(1, 3, config.image_size, config.image_size),
                              max_flops=config.max_flops, max_params=config.max_params)


def _darts_kwargs(config: SearchConfig) -> dict[str, Any]:
    """Seed and, when set, the alphas' learning rate (else the strategy's paper value)."""
    kwargs: dict[str, Any] = {'seed': config.seed}
    if config.arc_learning_rate is not None:
        kwargs['arc_learning_rate'] = config.arc_learning_rate
    return kwargs


def _sgas_kwargs(config: SearchConfig) -> dict[str, Any]:
    return dict(_darts_kwargs(config), criterion=config.sgas_criterion, decision_warmup=config.decision_warmup,
                decision_freq=config.decision_freq)


def _pinas_queue_size(config: SearchConfig, num_images: int) -> int:
    """The configured queue, or ``queue_fraction`` of the training images in whole batches: at least one batch, at
    most the paper's 49152."""
    if config.queue_size is not None:
        return config.queue_size
    keys = min(49152, int(config.queue_fraction * num_images))
    return max(config.batch_size, keys // config.batch_size * config.batch_size)


def _build_strategy(config: SearchConfig, space: torch.nn.Module, num_images: int):
    if config.strategy == 'unnas':
        return UnNAS(config.task, seed=config.seed, arc_learning_rate=config.arc_learning_rate,
                     augment=config.pretext_augment)
    if config.strategy == 'sgas':
        return SGAS(**_sgas_kwargs(config))
    if config.strategy == 'unrealnas':
        kwargs = _sgas_kwargs(config) if config.algorithm == 'sgas' else _darts_kwargs(config)
        return UnrealNAS(config.unreal_data, config.algorithm, num_classes=search_num_classes(config, num_images),
                         image_shape=(3, config.image_size, config.image_size), **kwargs)
    constraint = _profiler_constraint(config, space)
    if config.strategy == 'pinas':
        return PiNAS(seed=config.seed, temperature=config.temperature, queue_size=_pinas_queue_size(config, num_images),
                     momentum=config.ema_momentum, cross_path=config.cross_path, mean_teacher=config.mean_teacher,
                     negatives=config.negatives, selection=config.selection, search=config.search,
                     evolution=config.evolution, constraint=constraint, channels_last=config.channels_last,
                     teacher_precision=config.teacher_precision, queue_precision=config.queue_precision)
    chosen = {'fixed': config.angle_fixed, 'pool': config.angle_pool, 'skip': config.angle_skip,
              'edges': config.angle_edges}
    policy = AnglePolicy(**{**getattr(space, 'angle_policy_defaults', {}),
                            **{k: v for k, v in chosen.items() if v is not None}})
    return RLNAS(num_classes=config.num_classes, label_mode=config.label_mode, seed=config.seed,
                 angle_policy=policy, search=config.search, evolution=config.evolution, constraint=constraint,
                 channels_last=config.channels_last)


class SearchMetricsCallback(EpochHistory):
    """Per-epoch metrics of a search: training loss/accuracy on its labels (random labels for RLNAS, the pretext
    task for UnNAS) and, with a NAS-Bench-201 table, RLNAS's Kendall tau of the angle ranking and the accuracy of
    the current top-angle cell, or UnNAS's current cell accuracy; UnNAS also reports the skip-connection count.

    Parameters
    ----------
    table
        A :class:`~nni_labelfree.benchmarks.NB201Table` or None.
    reporter
        Called with each epoch's metric dict (e.g. ``nni.report_intermediate_result``).
    """

    def __init__(self, table=None, reporter: Reporter | None = None):
        super().__init__(reporter)
        self.table = table
        self._sums = np.zeros(3)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sums[:] = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs['loss'] if isinstance(outputs, dict) else outputs
        acc = trainer.callback_metrics.get('train_acc')
        targets = (batch['train'] if isinstance(batch, dict) else batch)[1]  # UnNAS: {'train': ..., 'val': ...}
        n = len(targets)
        self._sums += (float(loss) * n, float(acc) * n if acc is not None else 0.0, n)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = {'epoch': trainer.current_epoch + 1, 'train_loss': float(self._sums[0] / max(self._sums[2], 1)),
                   'train_acc': float(self._sums[1] / max(self._sums[2], 1))}
        metrics.update({k: float(v) for k, v in self.ranking_metrics(pl_module).items()})
        metrics['default'] = metrics.get('kendall_tau', metrics.get('exported_acc', metrics['train_acc']))
        self.publish(metrics)  # the history goes into every checkpoint (EpochHistory.state_dict)

    def ranking_metrics(self, pl_module) -> dict:
        """RLNAS: Kendall tau of the angles of all cells vs the table and the top-angle cell's accuracy.
        Differentiable strategies: the current cell's skip connections and table accuracy."""
        if callable(getattr(pl_module, 'epoch_metrics', None)):  # Pi-NAS: loss terms, cross-path similarity
            return {k: v for k, v in pl_module.epoch_metrics().items() if k != 'epoch'}
        if not hasattr(pl_module, 'angle_scorer'):
            arch = pl_module.export()
            metrics = {'skip_connections': count_skip_connections(arch)}
            if callable(getattr(pl_module, 'sgas_metrics', None)):  # edges decided so far
                metrics.update(pl_module.sgas_metrics())
            if self.table is not None and set(arch) == set(NB201_LABELS):
                metrics['exported_acc'] = self.table.accuracy(arch)
            return metrics
        if self.table is None:
            return {}
        scorer = pl_module.angle_scorer()
        if tuple(scorer.labels) != NB201_LABELS:
            return {}
        angles = scorer.angles(scorer.all_encodings())
        truth = self.table.values('cifar10_test')
        best = int(np.argmax(angles))
        return {'kendall_tau': kendall_tau(angles, truth), 'top_angle_acc': float(truth[best])}


class PeriodicCheckpoint(pl.Callback):
    """Save the supernet's parameters every ``every`` epochs (atomically) as ``supernet_epoch{N}.pt``."""

    def __init__(self, directory: Path, every: int):
        self.directory, self.every = directory, every

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if self.every and epoch % self.every == 0 and trainer.is_global_zero:
            atomic_save(_supernet_params(pl_module.model), self.directory / f'supernet_epoch{epoch}.pt')


def _trainer_kwargs(config: SearchConfig, callbacks: list) -> dict:
    kwargs: dict[str, Any] = dict(accelerator=config.accelerator, devices=config.devices, callbacks=callbacks,
                                  enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0,
                                  deterministic=False, enable_checkpointing=True, plugins=[AtomicCheckpointIO()])
    if config.max_minutes:
        kwargs['max_time'] = timedelta(minutes=config.max_minutes)
    if config.lightning_strategy == 'ddp':
        from pytorch_lightning.strategies import DDPStrategy
        # Single-path training leaves most supernet weights unused at every step.
        kwargs['strategy'] = DDPStrategy(find_unused_parameters=True)
    return kwargs


def _resume_point(config: SearchConfig, checkpoints: Path, rank: int) -> Path | None:
    """The checkpoint to continue from (``None``: start afresh), after checking it belongs to this search."""
    found = resume_candidate(checkpoints, config.resume, owner=rank == 0, logger=_logger,
                             what='previous search checkpoints')
    if found is None:
        return None
    path, checkpoint = found
    _check_same_search(config, checkpoint_metadata(checkpoint).get('config'), path)
    _logger.info('Resuming the search from %s (%d of %d epochs done).', path, checkpoint.get('epoch', -1) + 1,
                 config.epochs)
    return path


def with_keys_added_later(saved: dict) -> dict:
    """A saved configuration with the keys added since, set to what such a search did: UnNAS did not augment
    (resume it with pretext_augment false), Pi-NAS held no images out (held_out_fraction 0) and sized a default
    queue at half the images (queue_fraction 0.5) and ran its teacher and queue in float32, RLNAS scored each
    edge's own candidates (angle_edges null), and ResNeSt had cells_per_stage blocks in every stage (stage_depths
    null); other strategies ignore these keys."""
    pinas = saved.get('strategy') == 'pinas'
    return {'pretext_augment': saved.get('strategy') != 'unnas',
            'held_out_fraction': 0.0 if pinas else SearchConfig.held_out_fraction,
            'queue_fraction': 0.5 if pinas and saved.get('queue_size') is None else SearchConfig.queue_fraction,
            'teacher_precision': SearchConfig.teacher_precision,
            'queue_precision': SearchConfig.queue_precision,
            'stage_depths': SearchConfig.stage_depths,
            'angle_edges': SearchConfig.angle_edges,
            **saved}


def _check_same_search(config: SearchConfig, saved: dict | None, path: Path) -> None:
    """Refuse to resume a checkpoint written with settings that change the result."""
    if saved is None:
        raise ValueError(f'{path} has no search configuration, so it cannot be resumed safely. Use a new --output, '
                         'or pass --resume false to start over (this deletes the checkpoints/search_epoch*.ckpt).')
    detail = changed_settings(with_keys_added_later(saved), config.to_dict(), _RESUME_FREE_KEYS)
    if detail:
        raise ValueError(f'{path} was written by a search with other settings ({detail}); resuming it would not '
                         'reproduce either search. Rerun with the original settings, use a new --output, or pass '
                         '--resume false to start over (this deletes the checkpoints/search_epoch*.ckpt).')


def run_search(config: SearchConfig, output_dir: str | Path, reporter: Reporter | None = None,
               extra_callbacks: list | None = None) -> dict:
    """Run (or resume) one search; write ``arch.json``, ``config.json``, ``metrics.json`` and checkpoints.

    Returns the final result dict (``default`` = the exported cell's table accuracy when a NAS-Bench-201 table is
    available, else its angle). Under DDP every rank returns it; only rank 0 writes files.
    """
    start = time.time()
    out = Path(output_dir)
    checkpoints = out / 'checkpoints'
    rank = process_rank()
    resume_from = _resume_point(config, checkpoints, rank)  # first: a refused resume must leave the folder as is
    if rank == 0:
        checkpoints.mkdir(parents=True, exist_ok=True)
        config.save(out / 'config.json')
    table = _load_table(config)
    metrics_cb = SearchMetricsCallback(table if config.space == 'nasbench201' else None, reporter)
    callbacks = [metrics_cb, PeriodicCheckpoint(checkpoints, config.checkpoint_every),
                 ResumableCheckpoint(checkpoints, keep=_KEEP_CHECKPOINTS, metadata={'config': config.to_dict()}),
                 *(extra_callbacks or [])]
    parts = build_search(config, callbacks)
    space, model, evaluator = parts.space, parts.model, parts.evaluator
    module = evaluator.module
    if rank == 0 and (resume_from is None or not (checkpoints / 'supernet_init.pt').exists()):
        atomic_save(_supernet_params(space), checkpoints / 'supernet_init.pt')
    if resume_from is not None:
        evaluator.fit_kwargs.update(ckpt_path=str(resume_from), weights_only=True)
    evaluator.evaluate(model)
    arch = module.export()
    result = _final_result(config, module, arch, table, metrics_cb.history, time.time() - start)
    if module.trainer.is_global_zero:
        _write_results(out, module, space, metrics_cb.history, result)
    return result


@dataclasses.dataclass
class SearchParts:
    """One search, built and wired but not trained: what :func:`build_search` returns.

    ``model`` is what the strategy trains (UnNAS wraps the supernet with its pretext head; Pi-NAS with its projection
    head); ``evaluator`` is already mutated by the strategy, so ``evaluator.module`` is the strategy's Lightning
    module. ``held_out_images`` is None unless the strategy selects on held-out images (Pi-NAS).
    """

    images: Dataset
    train_images: Dataset
    held_out_images: Dataset | None
    num_classes: int
    space: torch.nn.Module
    strategy: Any
    model: torch.nn.Module
    evaluator: Any


def build_search(config: SearchConfig, callbacks: list | None = None) -> SearchParts:
    """Images, space, strategy and evaluator of the search ``config`` describes, in the order the strategy needs.

    Seeds everything with ``config.seed`` first, so the same config builds the same initial supernet. Pi-NAS holds
    ``config.held_out_fraction`` of the images out (seeded) as the evaluator's validation images, which serve its
    selection and probes only; every other strategy gets the same images as training and validation data.
    """
    pl.seed_everything(config.seed, workers=True, verbose=False)
    images = build_images(config)
    num_classes = search_num_classes(config, len(images))
    space = _build_space(config, num_classes)
    train_images, held_out = images, None
    if config.strategy == 'pinas' and config.held_out_fraction > 0:
        train_images, held_out = split_held_out(images, config.held_out_fraction, config.seed)
    strategy = _build_strategy(config, space, len(train_images))
    evaluator = _evaluator(config, train_images, list(callbacks or []), num_classes, held_out)
    if isinstance(strategy, UnNAS):
        strategy.prepare(evaluator.train_dataloaders)  # the task head's size comes from the data
    model = strategy.mutate_model(space)  # UnNAS returns the supernet wrapped with its pretext head
    evaluator = strategy.mutate_evaluator(evaluator)
    return SearchParts(images, train_images, held_out, num_classes, space, strategy, model, evaluator)


def _evaluator(config: SearchConfig, images: Dataset, callbacks: list, num_classes: int,
               val_images: Dataset | None = None):
    loader = DataLoader(images, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers,
                        drop_last=len(images) > config.batch_size)
    val_loader = loader if val_images is None else DataLoader(val_images, batch_size=config.batch_size,
                                                              num_workers=config.num_workers)
    return sgd_classification(
        loader, val_loader, num_classes=num_classes, max_epochs=config.epochs,
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, momentum=config.momentum,
        nesterov=config.nesterov, min_learning_rate=config.min_learning_rate, **_trainer_kwargs(config, callbacks))


def _write_results(out: Path, module, space: torch.nn.Module, history: list[dict], result: dict) -> None:
    atomic_save({'initial': getattr(module, 'initial_weights', None), 'final': _supernet_params(space)},
                out / 'checkpoints' / 'supernet_final.pt')
    (out / 'metrics.json').write_text(json.dumps(history, indent=2) + '\n')
    (out / 'arch.json').write_text(json.dumps(result, indent=2) + '\n')


def _supernet_params(space: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in space.state_dict().items()}


def _load_table(config: SearchConfig):
    if config.benchmark_table in (None, '', 'none') or config.space != 'nasbench201':
        return None
    return load_nb201_table(None if config.benchmark_table == 'builtin' else config.benchmark_table)


def _final_result(config: SearchConfig, module, arch: dict, table, history: list[dict], wall: float) -> dict:
    result: dict[str, Any] = {'arch': arch, 'strategy': config.strategy, 'seed': config.seed, 'data': config.data,
                              'wall_time': wall}
    ranked = getattr(module, 'search_result', None)
    if ranked:  # RLNAS: angles; Pi-NAS: linear-eval accuracy or the label-free held-out contrastive score
        score = 'angle' if config.strategy == 'rlnas' else 'fitness'
        result.update({score: ranked[0][1], 'top': [[a, s] for a, s in ranked[:10]]})
    if getattr(module, 'selection_kind', None):
        result['selection'] = module.selection_kind
    if config.strategy == 'unnas':
        result.update(task=config.task)
    if config.strategy == 'unrealnas':
        result.update(unreal_data=config.unreal_data, algorithm=config.algorithm)
    if config.strategy in ('unnas', 'sgas', 'unrealnas'):
        result['skip_connections'] = count_skip_connections(arch)
    if config.space == 'nasbench201':
        result['nb201_string'] = arch_to_string(arch)
    elif config.space == 'darts':
        from nni_labelfree.search_spaces.darts import genotype_from_arch
        result['genotype'] = genotype_from_arch(arch)
    if history:
        result['train_loss'] = history[-1]['train_loss']
        result['train_acc'] = history[-1]['train_acc']
        if 'kendall_tau' in history[-1]:
            result['kendall_tau'] = history[-1]['kendall_tau']
    if table is not None:
        result['test_acc'] = table.accuracy(arch)
    result['default'] = result.get('test_acc', result.get('angle', result.get('fitness', result.get('train_acc', 0.0))))
    return result
