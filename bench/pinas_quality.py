"""Pi-NAS search quality over a uniform sample of NAS-Bench-201, scored on a finished search's trained supernet.

The search's images, supernet, projection head and strategy are rebuilt from its run folder as
``nni-labelfree search --strategy pinas`` built them (:mod:`nni_labelfree.experiment.search`), and the newest
readable ``checkpoints/search_epoch*.ckpt`` is restored through the module's own Lightning hooks (the resume path).
Both selection criteria of the strategy, built by ``PiNASModule.selection_fitness`` with the run's settings, then
score a seeded uniform sample of distinct cells of the whole space:

- ``linear_eval``: linear-evaluation accuracy (one classifier on the frozen supernet, BN recalibrated per cell);
- ``label_free``: minus the held-out contrastive loss (its retrieval accuracy is recorded too).

Controls for the BN recalibration, on the first ``--bn-controls`` cells of the sample: the same classifier's
accuracy with BN on the supernet's running statistics, shared by all paths in training (``bn_running``), and on
each validation batch's own statistics (``bn_batch``; batches drawn shuffled, as the search's images are stored
class by class). As for RLNAS (:mod:`bench.search_quality`) every score gets the Kendall tau against the table's
``cifar10_test`` over the sample, the tau within groups of equal size and the table accuracy of its top cell
(lowest sample index among ties), next to the training-free rules on the same sample and on the whole space
(calibration.md). The run's own ranked top 10 is rescored first: the rebuild must reproduce its fitness values.

    python -m bench.pinas_quality --run bench/results/pinas_quality/s0 --sample 300 --seed 0 --bn-controls 80
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from nni_labelfree.benchmarks import nasbench201 as nb
from nni_labelfree.experiment.checkpoint import changed_settings, checkpoint_metadata, newest_valid_checkpoint
from nni_labelfree.experiment.config import SearchConfig, resolve_config
from nni_labelfree.experiment.search import _RESUME_FREE_KEYS, build_search, with_keys_added_later
from nni_labelfree.metrics.correlation import top_k_mean
from nni_labelfree.selection.linear_eval import LinearEvaluator, activate_path, batch_statistics

from bench.common import run_quality_bench
from bench.search_quality import _stats, rule_metrics

__all__ = ['parse_args', 'load_run_config', 'restore_module', 'sample_cells', 'criteria', 'score_cells',
           'criterion_stats', 'exported_cell', 'exports', 'run', 'format_table', 'main']

_logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / 'bench' / 'results' / 'pinas_quality.json'
SCORES = ('linear_eval', 'label_free', 'label_free_retrieval')
BN_SCORES = ('bn_recalibrated', 'bn_running', 'bn_batch')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; bad values exit with status 2 and a message saying what is expected."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--run', required=True, type=Path,
                        help='output folder of a finished `nni-labelfree search --strategy pinas --space nasbench201`')
    parser.add_argument('--sample', type=int, default=300, help='distinct cells drawn uniformly from all 15,625')
    parser.add_argument('--seed', type=int, default=0, help='seeds the sample (the scorers use the run\'s seed)')
    parser.add_argument('--bn-controls', type=int, default=80,
                        help='cells of the sample (the first ones) also scored without BN recalibration; 0: none')
    parser.add_argument('--out', type=Path, default=DEFAULT_OUT, help='JSON result (default: %(default)s)')
    args = parser.parse_args(argv)
    if not 2 <= args.sample <= nb.NB201_NUM_CELLS:
        parser.error(f'--sample must lie in [2, {nb.NB201_NUM_CELLS}] (a tau needs two cells), got {args.sample}.')
    if not 0 <= args.bn_controls <= args.sample:
        parser.error(f'--bn-controls must lie in [0, --sample={args.sample}], got {args.bn_controls}.')
    if args.seed < 0:
        parser.error(f'--seed must be a non-negative integer, got {args.seed}.')
    if not args.run.is_dir():
        parser.error(f'--run {args.run} is not a folder; pass the --output folder of a finished Pi-NAS search.')
    return args


# -- the run ----------------------------------------------------------------------------------------------------------
def load_run_config(run: Path) -> SearchConfig:
    """The run's resolved configuration (``config.json``); a relative data root is read from the cwd, else the repo."""
    path = Path(run) / 'config.json'
    if not path.is_file():
        raise ValueError(f'{run} has no config.json; pass the --output folder of `nni-labelfree search`.')
    config = resolve_config(with_keys_added_later(json.loads(path.read_text())))  # as the run was: resume's rule
    if config.strategy != 'pinas' or config.space != 'nasbench201':
        raise ValueError(f'{run} holds a {config.strategy} search on {config.space}; this benchmark needs '
                         'strategy pinas on space nasbench201 (the table gives the ground truth).')
    root = Path(config.data_root) if config.data_root else None
    if root is not None and not root.is_absolute() and not root.exists() and (REPO / root).exists():
        config = dataclasses.replace(config, data_root=str(REPO / root))
    return config


def restore_module(config: SearchConfig, run: Path) -> tuple[Any, Path]:
    """The run's trained ``PiNASModule`` and the checkpoint it came from.

    Built in :func:`~nni_labelfree.experiment.search.run_search`'s order (images, space, strategy, evaluator,
    ``mutate_model``, ``mutate_evaluator``, which hands the images to the module); then restored as Lightning
    resumes: ``on_load_checkpoint`` (teacher, queue, history), then the weights.
    """
    found = newest_valid_checkpoint(Path(run) / 'checkpoints')
    if found is None:
        raise ValueError(f'{run}/checkpoints holds no readable search_epoch*.ckpt; the search did not finish an '
                         'epoch, or its checkpoints were deleted.')
    path, checkpoint = found
    changed = changed_settings(with_keys_added_later(checkpoint_metadata(checkpoint).get('config') or {}),
                               config.to_dict(), _RESUME_FREE_KEYS)
    if changed:
        raise ValueError(f'{path} was written with other settings than {run}/config.json ({changed}).')
    parts = build_search(config)
    module = parts.evaluator.module
    module.set_model(parts.model)
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint['state_dict'])
    return module, path


def sample_cells(count: int, seed: int) -> np.ndarray:
    """Op indices ``(count, 6)`` of ``count`` distinct cells drawn uniformly (seeded) from all 15,625."""
    if not 1 <= count <= nb.NB201_NUM_CELLS:
        raise ValueError(f'count must lie in [1, {nb.NB201_NUM_CELLS}], got {count}.')
    rows = np.random.default_rng(seed).choice(nb.NB201_NUM_CELLS, size=count, replace=False)
    return nb.all_op_indices()[rows]


# -- the scores -------------------------------------------------------------------------------------------------------
def _selection_fitness(module, selection: str) -> Callable[[dict], float]:
    """The fitness the strategy would rank by with ``selection`` (the linear evaluator comes back fitted)."""
    saved, module.strategy.selection = module.strategy.selection, selection
    try:
        fitness, kind = module.selection_fitness()
    finally:
        module.strategy.selection = saved
    if kind != selection:
        raise RuntimeError(f'PiNAS built a {kind} criterion when {selection} was asked for.')
    return fitness


@contextlib.contextmanager
def _running_statistics(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode (BN on its running statistics, shared by every path during training); modes restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _shuffled(batches: list, seed: int) -> list:
    """The same images and labels in batches of the same size, in a seeded random order."""
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    size = len(batches[0][1])
    return list(zip(images[order].split(size), labels[order].split(size)))


@torch.no_grad()
def _unrecalibrated_accuracy(evaluator: LinearEvaluator, batches: list, arch: dict, bn: str) -> float:
    """``evaluator``'s classifier on ``arch`` without recalibration: BN on running (``'running'``) or per-batch
    (``'batch'``) statistics."""
    network = evaluator.supernet
    device = next(network.parameters()).device
    activate_path(network, arch)
    correct = total = 0
    with (batch_statistics(network) if bn == 'batch' else _running_statistics(network)):
        for images, labels in batches:
            predictions = evaluator.classifier(evaluator.embed(images.to(device))).argmax(1).cpu()
            correct += int((predictions == labels).sum())
            total += len(labels)
    return correct / total


def criteria(module) -> tuple[dict[str, Callable[[dict], dict[str, float]]], dict[str, Any]]:
    """Scorers ``arch -> {name: value}`` keyed by criterion, and their settings and build times."""
    started = time.perf_counter()
    linear = _selection_fitness(module, 'linear_eval')
    fitted = time.perf_counter()
    label_free = _selection_fitness(module, 'label_free')
    built = time.perf_counter()
    ordered = [(images, torch.as_tensor(labels)) for images, labels, *_ in linear.val_loader]
    batches = _shuffled(ordered, seed=0)

    def bn_controls(arch: dict) -> dict[str, float]:
        return {f'bn_{bn}': _unrecalibrated_accuracy(linear, batches, arch, bn) for bn in ('running', 'batch')}

    def contrastive(arch: dict) -> dict[str, float]:
        scores = label_free.scores(arch)
        return {'label_free': -scores['loss'], 'label_free_retrieval': scores['accuracy']}

    scorers = {'linear_eval': lambda arch: {'linear_eval': linear.accuracy(arch)}, 'label_free': contrastive,
               'bn_controls': bn_controls}
    info = {'linear_eval': {'steps': linear.steps, **linear.optim, 'bn_batches': linear.bn_batches,
                            'val_images': sum(len(labels) for _, labels in batches),
                            'val_images_are_train_images': module.val_base is module.train_base},
            'label_free': {'held_out_images': len(label_free.views), 'temperature': label_free.temperature,
                           'held_out_images_are_train_images': module.val_base is module.train_base},
            'seconds': {'linear_classifier_fit': fitted - started, 'label_free_views': built - fitted}}
    return scorers, info


def _arch(op_row: Sequence[int]) -> dict:
    return {label: nb.NB201_OPS[k] for label, k in zip(nb.NB201_LABELS, op_row)}


def score_cells(scorers: dict[str, Callable[[dict], dict[str, float]]],
                op_idx: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every scorer on every cell: ``({score: values in op_idx order}, {scorer: seconds})``."""
    values: dict[str, list[float]] = {}
    seconds = dict.fromkeys(scorers, 0.0)
    for n, row in enumerate(op_idx, 1):
        arch = _arch(row)
        for name, scorer in scorers.items():
            started = time.perf_counter()
            for key, value in scorer(arch).items():
                values.setdefault(key, []).append(float(value))
            seconds[name] += time.perf_counter() - started
        if n % 50 == 0 or n == len(op_idx):
            _logger.info('scored %d/%d cells (%s)', n, len(op_idx),
                         ', '.join(f'{k} {v / n * 1000:.0f} ms/cell' for k, v in seconds.items()))
    return {k: np.asarray(v) for k, v in values.items()}, seconds


def criterion_stats(score: np.ndarray, truth: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """:mod:`bench.search_quality`'s statistics plus the top-10 mean, the ties at the top and the score's spread."""
    top = np.nanmax(score)
    return {**_stats(score, truth, groups), 'top10_mean_acc': top_k_mean(score, truth, min(10, len(score))),
            'top1_tied': int(np.sum(score == top)), 'min': float(np.nanmin(score)), 'max': float(top),
            'std': float(np.nanstd(score)), 'distinct': int(len(np.unique(score)))}


def _rescore_run_top(scorers: dict, run: Path) -> dict[str, Any] | None:
    """The run's ranked top cells rescored with the rebuilt linear evaluator (a check that the rebuild is exact)."""
    path = Path(run) / 'arch.json'
    top = json.loads(path.read_text()).get('top') if path.is_file() else None
    if not top:
        return None
    again = [scorers['linear_eval'](dict(arch))['linear_eval'] for arch, _ in top]
    return {'cells': len(top), 'max_abs_diff': float(max(abs(a - s) for a, (_, s) in zip(again, top)))}


# -- the report -------------------------------------------------------------------------------------------------------
def _sample_accuracy(table, op_idx: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {'best': float(truth.max()), 'median': float(np.median(truth)), 'mean': float(truth.mean()),
            'disconnected': int(np.sum(~nb.valid_path_mask(op_idx).any(1))),
            'best_rank_in_space': float(table.rank_percentile(truth.max()))}


def _cell_rows(op_idx: np.ndarray, truth: np.ndarray, values: dict[str, np.ndarray]) -> list[list]:
    """One row per sampled cell: string, table accuracy, then every score (None where it was not measured)."""
    columns = [*SCORES, *BN_SCORES]
    return [[string, float(truth[i]), *(float(values[k][i]) if i < len(values.get(k, ())) else None
                                         for k in columns)]
            for i, string in enumerate(nb.op_indices_to_strings(op_idx))]


def _bn_block(values: dict[str, np.ndarray], truth: np.ndarray, groups: np.ndarray) -> dict[str, Any] | None:
    count = len(values.get('bn_recalibrated', ()))
    if count < 2:
        return None
    stats = {k: criterion_stats(values[k], truth[:count], groups[:count]) for k in BN_SCORES}
    return {'cells': count, **stats}


def exported_cell(arch: dict, fitness: float, table) -> dict[str, Any]:
    """An exported cell as the reports show it: its NAS-Bench-201 string, its fitness and its table accuracy."""
    row = nb.arch_to_op_indices(arch)
    return {'nb201_string': nb.arch_to_string(arch), 'fitness': float(fitness),
            'cifar10_test': float(table.accuracies(row[None])[0])}


def exports(module, table) -> dict[str, dict[str, Any]]:
    """The cell the strategy's own search exports with each selection criterion, on the restored supernet.

    ``PiNAS.select`` runs as at the end of the search (the run's evolution settings and seed); with the run's own
    criterion it reproduces the run's export, with the other it shows what that choice would have exported.
    """
    found, saved = {}, module.strategy.selection
    try:
        for selection in ('linear_eval', 'label_free'):
            module.strategy.selection, module.search_result = selection, None
            found[selection] = exported_cell(module.export(), module.search_result[0][1], table)
    finally:
        module.strategy.selection, module.search_result = saved, None
    return found


def run(run_dir: Path, count: int, seed: int, bn_controls: int = 80) -> dict[str, Any]:
    """Restore the run, score ``count`` sampled cells (the first ``bn_controls`` also without recalibration) and
    summarise; returns the JSON-ready result."""
    started, load = time.perf_counter(), os.getloadavg()[0]
    config = load_run_config(run_dir)
    module, checkpoint = restore_module(config, run_dir)
    restored = time.perf_counter()
    scorers, info = criteria(module)
    controls = {'bn_controls': scorers.pop('bn_controls')}
    check = _rescore_run_top(scorers, run_dir)
    table, op_idx = nb.load_nb201_table(), sample_cells(count, seed)
    truth, groups = table.accuracies(op_idx), nb.params_on_valid_paths(op_idx)
    values, seconds = score_cells(scorers, op_idx)
    if bn_controls:
        more, more_seconds = score_cells(controls, op_idx[:bn_controls])
        values.update(more, bn_recalibrated=values['linear_eval'][:bn_controls])  # the same evaluator, recalibrated
        seconds.update(more_seconds)
    all_idx = nb.all_op_indices()
    exported = exports(module, table)
    return {
        'run': str(run_dir), 'checkpoint': checkpoint.name, 'sample': count, 'seed': seed,
        'config': {k: getattr(config, k) for k in ('data', 'num_images', 'channels', 'cells_per_stage', 'batch_size',
                                                    'max_minutes', 'seed', 'selection')},
        'trained': {'epochs': len(module.history), 'steps': module.steps, 'final_epoch': module.history[-1]},
        'settings': {k: v for k, v in info.items() if k != 'seconds'},
        'run_top_rescored': check,
        'exports': exported,
        'sample_table_acc': _sample_accuracy(table, op_idx, truth),
        'criteria': {k: criterion_stats(values[k], truth, groups) for k in SCORES},
        'bn_recalibration': _bn_block(values, truth, groups),
        'rules': rule_metrics(truth, op_idx, groups),
        'rules_whole_space': rule_metrics(table.values('cifar10_test'), all_idx, nb.params_on_valid_paths(all_idx)),
        'wall_seconds': {'restore': restored - started, **info['seconds'],
                         **{f'score_{k}': v for k, v in seconds.items()}, 'total': time.perf_counter() - started},
        'load_average': {'start': load, 'end': os.getloadavg()[0]},
        'cell_columns': ['nb201_string', 'cifar10_test', *SCORES, *BN_SCORES],
        'cells': _cell_rows(op_idx, truth, values),
    }


def _row(name: str, s: dict[str, Any]) -> str:
    return (f'| {name} | {s["tau"]:.3f} | {s["tau_within_size"]:.3f} | {s["top1_acc"]:.2f} ({s["top1_tied"]} tied) '
            f'| {s["top10_mean_acc"]:.2f} | {s["min"]:.4g}..{s["max"]:.4g}, {s["distinct"]} distinct |')


def format_table(result: dict[str, Any]) -> str:
    """A compact Markdown table: the criteria, the BN controls, then the rules on the same sample."""
    lines = ['| scorer | Kendall tau | tau within equal size | top-1 cell acc | top-10 mean acc | score range |',
             '|---|---|---|---|---|---|']
    lines += [_row(f'pinas: {name}', s) for name, s in result['criteria'].items()]
    bn = result['bn_recalibration']
    if bn:
        lines += [_row(f'{name} (first {bn["cells"]})', bn[name]) for name in BN_SCORES]
    for name, s in result['rules'].items():
        whole = result['rules_whole_space'][name]['tau']
        lines.append(f'| rule: {name} | {s["tau"]:.3f} (space {whole:.3f}) | {s["tau_within_size"]:.3f} | '
                     f'{s["top1_acc"]:.2f} | - | - |')
    for selection, cell in result['exports'].items():
        lines.append(f'| exported with {selection} | {cell["nb201_string"]} | - | {cell["cifar10_test"]:.2f} | - | '
                     f'fitness {cell["fitness"]:.4g} |')
    acc, wall = result['sample_table_acc'], result['wall_seconds']
    lines.append(f'\nsample of {result["sample"]} (seed {result["seed"]}): best {acc["best"]:.2f} (top '
                 f'{100 * acc["best_rank_in_space"]:.2f}% of the space), median {acc["median"]:.2f}, '
                 f'{acc["disconnected"]} disconnected; wall {wall["total"]:.0f} s (load {result["load_average"]}); '
                 f'run top-10 rescored: {result["run_top_rescored"]}')
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    run_quality_bench('bench.pinas_quality', lambda: run(args.run, args.sample, args.seed, args.bn_controls),
                      args.out, format_table)


if __name__ == '__main__':
    main()
