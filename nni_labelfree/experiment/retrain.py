"""Retrain an exported architecture from scratch with real labels: ``nni-labelfree retrain`` and its nnictl trial.

The last step of every label-free search (RLNAS, UnNAS, UnrealNAS: the found cell is trained from scratch on the
labelled task; Zhang et al. CVPR 2021, Liu et al. ECCV 2020), with the papers' recipes as presets
(:mod:`.retrain_config`): NAS-Bench-201's 200-epoch training of the cell network and DARTS's 600-epoch evaluation
of a 20-cell network with cutout, auxiliary head and drop-path (:mod:`nni_labelfree.search_spaces.darts_retrain`).

- ``nni-labelfree retrain --arch runs/x/arch.json --data cifar10 [--space nasbench201] [--preset nb201|darts|cpu]
  [--set key=value ...] --output D``: one run in this process;
- ``python3 -m nni_labelfree.experiment.retrain --set arch=<path or string> --set preset=cpu ...``: the nnictl
  trial; ``nni.get_next_parameter()`` (e.g. ``arch``, ``seed``) wins over the ``--set`` flags; every epoch reports
  ``{'default': val_acc, ...}``, the end ``{'default': test_acc, 'val_acc', 'params', 'flops', 'arch', ...}``.

Artifacts in the output folder (``$NNI_OUTPUT_DIR`` in a trial): ``config.json`` (resolved settings),
``metrics.json`` (one dict per epoch), ``result.json`` (the final result plus the arch dict) and ``model_final.pt``
(``{'state_dict', 'arch', 'space', 'num_classes', 'config'}``, loadable with ``torch.load(weights_only=True)``).
Parameters and FLOPs are those of the inference network (no auxiliary head) for one image, counted by NNI's
``FlopsParamsProfiler`` on the evaluation space at this architecture.

Resume: every epoch ends with a resumable Lightning checkpoint in ``checkpoints/search_epoch{N}.ckpt`` (the
project's checkpoint format, :mod:`.checkpoint`; the last two kept). Rerunning the same command on the same output
folder continues from the newest readable one, with the weights, optimiser, schedule, metrics history and the
random streams (batch order, augmentation, drop-path) restored, so on CPU it ends where an uninterrupted run ends;
a checkpoint written with other settings is refused, ``resume=false`` starts over. (nnictl gives every trial a new
output folder, so this serves ``nni-labelfree retrain --output D`` and trials given an ``output_dir``.)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from nni_labelfree.data import derive_seed
from nni_labelfree.experiment.checkpoint import (AtomicCheckpointIO, ResumableCheckpoint, atomic_save,
                                                 changed_settings, checkpoint_metadata, resume_candidate)
from nni_labelfree.experiment.retrain_arch import LoadedArchitecture, load_architecture
from nni_labelfree.experiment.retrain_config import RetrainConfig, resolve_retrain_config
from nni_labelfree.experiment.retrain_data import BatchAugment, LabelledSplits, labelled_splits
from nni_labelfree.experiment.retrain_module import EpochReporter, RetrainModule
from nni_labelfree.experiment.trial import parse_set_flags, trial_main

__all__ = ['build_network', 'profile_architecture', 'run_retrain', 'final_metric', 'run_trial',
           'parse_retrain_set_flags', 'add_arguments', 'run_from_args', 'main']

_logger = logging.getLogger(__name__)

Reporter = Callable[[dict], None]
# Settings that may change between an interrupted run and its continuation without changing the result.
_RESUME_FREE_KEYS = frozenset({'output_dir', 'resume', 'num_threads', 'num_workers', 'max_minutes', 'accelerator'})


# -- network -----------------------------------------------------------------------------------------------------
def _evaluation_space(config: RetrainConfig, num_classes: int) -> nn.Module:
    if config.space == 'darts':
        from nni_labelfree.search_spaces.darts_retrain import darts_eval_space
        return darts_eval_space(config.channels, config.num_cells, num_classes)
    from nni_labelfree.search_spaces import NasBench201Space
    return NasBench201Space(channels=config.channels, cells_per_stage=config.cells_per_stage,
                            num_classes=num_classes, affine=True)  # NAS-Bench-201 trains with affine BN


def profile_architecture(space: nn.Module, arch: dict, image_size: int) -> dict[str, float]:
    """FLOPs and parameters of ``arch`` for one image, from NNI's profiler on the (un-frozen) space."""
    from nni.nas.profiler.pytorch.flops import FlopsParamsProfiler
    profiler_logger = logging.getLogger('nni.nas.profiler.pytorch.flops')
    level = profiler_logger.level
    profiler_logger.setLevel(logging.ERROR)  # parameter-free leaves (pools, identity) are reported one by one
    try:
        result = FlopsParamsProfiler(space, torch.randn(1, 3, image_size, image_size)).profile(dict(arch))
    finally:
        profiler_logger.setLevel(level)
    return {'flops': float(result.flops), 'params': float(result.params)}


def build_network(config: RetrainConfig, arch: dict, num_classes: int) -> tuple[nn.Module, dict[str, float]]:
    """The fixed network to train (DARTS: with auxiliary head and drop-path) and its FLOPs/parameters."""
    space = _evaluation_space(config, num_classes)
    cost = profile_architecture(space, arch, config.image_size)  # before freezing: frozen nets share its modules
    frozen = space.freeze(dict(arch))
    if config.space == 'darts':
        from nni_labelfree.search_spaces.darts_retrain import DartsRetrainNetwork
        return DartsRetrainNetwork(frozen, num_classes, auxiliary=config.auxiliary_weight > 0), cost
    return frozen, cost


# -- training ----------------------------------------------------------------------------------------------------
def _loaders(config: RetrainConfig, splits: LabelledSplits) -> tuple:
    from nni.nas.evaluator.pytorch import DataLoader  # NNI's traced DataLoader, as its Lightning evaluator wants
    generator = torch.Generator().manual_seed(derive_seed(config.seed, 3))
    train = DataLoader(splits.train, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers,
                       drop_last=len(splits.train) > config.batch_size, generator=generator)
    evaluate = [DataLoader(part, batch_size=config.batch_size, num_workers=config.num_workers)
                if part is not None else None for part in (splits.val, splits.test)]
    return train, evaluate[0], evaluate[1]


def _evaluator(config: RetrainConfig, splits: LabelledSplits, loaders: tuple, callbacks: list):
    from nni.nas.evaluator.pytorch import Lightning, Trainer
    module = RetrainModule(learning_rate=config.learning_rate, weight_decay=config.weight_decay,
                           momentum=config.momentum, nesterov=config.nesterov,
                           min_learning_rate=config.min_learning_rate, max_epochs=config.epochs,
                           num_classes=splits.num_classes, auxiliary_weight=config.auxiliary_weight,
                           drop_path=config.drop_path, augment=BatchAugment(4, config.cutout, seed=config.seed))
    module.shuffle_generator = loaders[0].generator
    kwargs: dict[str, Any] = dict(accelerator=config.accelerator, devices=1, max_epochs=config.epochs,
                                  callbacks=callbacks, enable_progress_bar=False, enable_checkpointing=True,
                                  plugins=[AtomicCheckpointIO()], enable_model_summary=False, logger=False,
                                  num_sanity_val_steps=0, gradient_clip_val=config.grad_clip)
    if loaders[1] is None:
        kwargs['limit_val_batches'] = 0
    if config.max_minutes:
        kwargs['max_time'] = timedelta(minutes=config.max_minutes)
    return Lightning(module, Trainer(**kwargs), train_dataloaders=loaders[0], val_dataloaders=loaders[1])


def run_retrain(config: RetrainConfig, output_dir: str | Path, reporter: Reporter | None = None,
                extra_callbacks: list | None = None) -> dict:
    """Train ``config.arch`` from scratch, test it, write the artifacts; return the final result dict.

    ``reporter`` receives each epoch's metric dict (:class:`~.retrain_module.EpochReporter`).
    """
    start = time.time()
    loaded = load_architecture(config.arch, config.space)
    out = Path(output_dir)
    resume_from = _resume_point(config, out / 'checkpoints')  # a refused resume leaves the folder as it is
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    splits = labelled_splits(config)  # missing data fails here, before anything is written or trained
    (out / 'checkpoints').mkdir(parents=True, exist_ok=True)
    config.save(out / 'config.json')
    pl.seed_everything(config.seed, workers=True, verbose=False)
    network, cost = build_network(config, loaded.arch, splits.num_classes)
    epochs = EpochReporter(reporter)
    loaders = _loaders(config, splits)
    resumable = ResumableCheckpoint(out / 'checkpoints', keep=2, metadata={'config': config.to_dict()})
    evaluator = _evaluator(config, splits, loaders, [epochs, *(extra_callbacks or []), resumable])
    if resume_from is not None:
        evaluator.fit_kwargs.update(ckpt_path=str(resume_from), weights_only=True)
    evaluator.evaluate(network)
    evaluator.trainer.test(evaluator.module, dataloaders=loaders[2], verbose=False)
    result = _final_result(config, loaded, evaluator.module.stage_metrics('test'), epochs.history, cost,
                           time.time() - start)
    _write_artifacts(out, config, loaded, network, splits.num_classes, epochs.history, result)
    return result


def _resume_point(config: RetrainConfig, checkpoints: Path) -> Path | None:
    """The epoch checkpoint to continue from (None: start afresh), after checking it belongs to this run."""
    found = resume_candidate(checkpoints, config.resume, logger=_logger)
    if found is None:
        return None
    path, checkpoint = found
    saved = checkpoint_metadata(checkpoint).get('config') or {}
    detail = changed_settings(saved, config.to_dict(), _RESUME_FREE_KEYS)
    if detail:
        raise ValueError(f'{path} was written by a retraining with other settings ({detail}). Rerun with the '
                         'original settings, use a new --output, or pass --resume false to start over (this '
                         'deletes its checkpoints/search_epoch*.ckpt).')
    _logger.info('Resuming from %s (%d of %d epochs done).', path, checkpoint.get('epoch', -1) + 1, config.epochs)
    return path


def _final_result(config: RetrainConfig, loaded: LoadedArchitecture, test: dict, history: list[dict],
                  cost: dict, wall: float) -> dict:
    last = history[-1] if history else {}
    result: dict[str, Any] = {
        'default': test['acc'], 'test_acc': test['acc'], 'test_loss': test['loss'],
        'val_acc': last.get('val_acc'), 'best_val_acc': max((h['val_acc'] for h in history if 'val_acc' in h),
                                                            default=None),
        'train_loss': last.get('train_loss'), 'train_acc': last.get('train_acc'),
        'params': cost['params'], 'flops': cost['flops'], 'arch': loaded.to_string(), 'space': config.space,
        'preset': config.preset, 'data': config.data, 'seed': config.seed, 'epochs': len(history),
        'wall_time': wall}
    if config.space == 'nasbench201':
        from nni_labelfree.benchmarks.nasbench201 import load_nb201_table
        result['table_acc'] = load_nb201_table().accuracy(loaded.arch)  # NAS-Bench-201's 200-epoch CIFAR-10 test
    return {k: v for k, v in result.items() if v is not None}


def _write_artifacts(out: Path, config: RetrainConfig, loaded: LoadedArchitecture, network: nn.Module,
                     num_classes: int, history: list[dict], result: dict) -> None:
    (out / 'metrics.json').write_text(json.dumps(history, indent=2) + '\n')
    (out / 'result.json').write_text(json.dumps({**result, 'arch_dict': loaded.arch, 'arch_source': loaded.source},
                                                indent=2) + '\n')
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    atomic_save({'state_dict': state, 'arch': loaded.arch, 'space': config.space, 'num_classes': num_classes,
                 'config': config.to_dict()}, out / 'model_final.pt')


# -- nnictl trial ------------------------------------------------------------------------------------------------
def parse_retrain_set_flags(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set`` pairs as :func:`~.trial.parse_set_flags` reads them, except ``arch``, kept verbatim (a
    NAS-Bench-201 string starts with ``|``, which YAML would read as a block scalar)."""
    verbatim, rest = {}, []
    for pair in pairs:
        key, sep, value = pair.partition('=')
        if sep and key.strip().replace('-', '_') == 'arch':
            verbatim['arch'] = value.strip()
        else:
            rest.append(pair)
    return {**parse_set_flags(rest), **verbatim}


def final_metric(result: dict) -> dict:
    """The final result as NNI's web UI takes it: numbers and short strings."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str))}


def _report_epoch(metrics: dict) -> None:
    import nni
    nni.report_intermediate_result({k: v for k, v in metrics.items() if isinstance(v, (int, float))})


def run_trial(set_flags: Sequence[str]) -> dict:
    """Resolve this trial's configuration (``--set`` flags, then NNI's parameters), retrain, report."""
    import nni
    params = nni.get_next_parameter() or {}  # must come before any report
    config = resolve_retrain_config(parse_retrain_set_flags(set_flags), params)
    output_dir = Path(config.output_dir or os.environ.get('NNI_OUTPUT_DIR', 'runs/retrain_trial'))
    config.output_dir = str(output_dir)
    result = run_retrain(config, output_dir, reporter=_report_epoch)
    nni.report_final_result(final_metric(result))
    return result


# -- command line ------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``nni-labelfree retrain``: every :class:`RetrainConfig` key, ``--set``, ``--output``."""
    from nni_labelfree.experiment.config import parse_value
    parser.add_argument('--arch', default=argparse.SUPPRESS,
                        help='arch.json, search/trial output folder, NAS-Bench-201 string or DARTS genotype')
    parser.add_argument('--output', '-o', default=None,
                        help='output folder (default: runs/retrain-<space>-<preset>-s<seed>)')
    parser.add_argument('--set', dest='set_flags', action='append', default=[], metavar='KEY=VALUE')
    for f in dataclasses.fields(RetrainConfig):
        if f.name not in ('arch', 'output_dir'):
            parser.add_argument(f'--{f.name.replace("_", "-")}', dest=f.name, type=parse_value,
                                default=argparse.SUPPRESS, help=f'(default: {f.default!r}, or the preset\'s)')


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``nni-labelfree retrain`` from parsed flags; print the result."""
    reserved = ('command', 'output', 'set_flags')
    overrides = {**{k: v for k, v in vars(args).items() if k not in reserved},
                 **parse_retrain_set_flags(args.set_flags)}
    config = resolve_retrain_config(overrides)
    output = args.output or config.output_dir or f'runs/retrain-{config.space}-{config.preset}-s{config.seed}'
    config.output_dir = str(output)
    result = run_retrain(config, output)
    print(f'Retrained {result["arch"]} ({config.space}, preset {config.preset}, {result["epochs"]} epochs)')
    for key in ('test_acc', 'val_acc', 'table_acc', 'params', 'flops', 'wall_time'):
        if key in result:
            print(f'  {key}: {result[key]:.4f}' if isinstance(result[key], float) else f'  {key}: {result[key]}')
    print(f'Artifacts in {output}/ (config.json, metrics.json, result.json, model_final.pt)')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m nni_labelfree.experiment.retrain --set key=value ...`` (the nnictl trial); the exit code is 2
    with one message at the end of the trial's log on bad input."""
    return trial_main(argv, prog='nni_labelfree.experiment.retrain', description=__doc__.splitlines()[0],
                      config_module='nni_labelfree.experiment.retrain_config', run=run_trial,
                      failure='nni-labelfree retrain trial failed')


if __name__ == '__main__':
    sys.exit(main())
