"""How much of a Pi-NAS selection criterion's ranking is the draw of its images, and what other criteria rank.

:mod:`bench.pinas_quality` scores a finished search's supernet with the strategy's two criteria exactly as the run
built them. This benchmark restores the same supernet and the same uniform sample of NAS-Bench-201 cells, and asks
how stable those rankings are and whether a variant ranks better:

- ``linear_eval``: the run's linear evaluation (its classifier, BN recalibrated on its 4 batches);
  ``linear_eval_other_bn``: the same classifier, BN recalibrated on 4 other training batches;
  ``linear_eval_all_bn``: the same classifier, BN recalibrated on every training batch;
- ``probe_per_cell``: a linear classifier fitted for each cell on its own frozen features (standardised,
  L-BFGS, L2 1e-3), accuracy on the held-out images; ``knn``: cosine 20-nearest-neighbour accuracy on the same
  features (no classifier at all);
- ``label_free``: the run's label-free criterion (minus the held-out contrastive loss, its image and view draw);
  ``label_free_seed<S>``: the same on all held-out images with views drawn with seed ``S`` (``..._retrieval``:
  how often an image's other view is its nearest neighbour); ``label_free_teacher_seed<S>``: the EMA teacher's
  weights instead of the student's.

Each gets :func:`bench.pinas_quality.criterion_stats` against the table's ``cifar10_test``; ``agreement`` gives the
Kendall tau between rankings that should agree (two recalibration draws, two view draws). ``--exports`` also reruns
the strategy's own evolution with the label-free criterion of each view seed: what the search would have exported
had its views been drawn differently.

    python -m bench.pinas_criterion_noise --run bench/results/pinas_quality/q128_s0 --sample 300 --exports
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy.stats import kendalltau
from torch.nn import functional as F
from torch.utils.data import DataLoader

from nni_labelfree.benchmarks import nasbench201 as nb
from nni_labelfree.selection.linear_eval import activate_path, recalibrated_bn
from nni_labelfree.strategies import pinas_probes as probes

from bench.common import run_quality_bench
from bench.pinas_quality import (_selection_fitness, criterion_stats, exported_cell, load_run_config,
                                 restore_module, sample_cells, score_cells)

__all__ = ['parse_args', 'fit_probe', 'knn_accuracy', 'feature_scorers', 'linear_scorers', 'label_free_scorers',
           'run', 'main']


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--run', required=True, type=Path,
                        help='output folder of a finished `nni-labelfree search --strategy pinas --space nasbench201`')
    parser.add_argument('--sample', type=int, default=300, help='distinct cells drawn uniformly from all 15,625')
    parser.add_argument('--seed', type=int, default=0, help='seeds the sample (bench.pinas_quality\'s default: 0)')
    parser.add_argument('--view-seeds', default='1001,2002',
                        help='comma-separated seeds of the extra label-free view draws (at least two)')
    parser.add_argument('--exports', action='store_true',
                        help='also rerun the strategy\'s evolution with the label-free criterion of each view seed')
    parser.add_argument('--out', type=Path, default=None, help='JSON result')
    args = parser.parse_args(argv)
    try:
        args.view_seeds = [int(s) for s in args.view_seeds.split(',')]
    except ValueError:
        parser.error(f'--view-seeds must be comma-separated integers, got {args.view_seeds!r}.')
    if len(args.view_seeds) < 2 or len(set(args.view_seeds)) != len(args.view_seeds):
        parser.error('--view-seeds needs at least two different seeds (their agreement is the point).')
    if not 2 <= args.sample <= nb.NB201_NUM_CELLS:
        parser.error(f'--sample must lie in [2, {nb.NB201_NUM_CELLS}], got {args.sample}.')
    if not args.run.is_dir():
        parser.error(f'--run {args.run} is not a folder; pass the --output folder of a finished Pi-NAS search.')
    return args


# -- per-cell probes on frozen features -------------------------------------------------------------------------------
def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
              num_classes: int, l2: float = 1e-3, iterations: int = 60) -> float:
    """Accuracy on ``val`` of a multinomial logistic regression fitted on standardised ``train`` features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    weight = torch.zeros(train_x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=iterations, history_size=10,
                                  line_search_fn='strong_wolfe')

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + l2 * weight.square().sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return float(((val_x @ weight + bias).argmax(1) == val_y).float().mean())


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 num_classes: int, k: int = 20, temperature: float = 0.1) -> float:
    """Cosine ``k``-nearest-neighbour accuracy with similarity-weighted votes (the usual SSL kNN monitor)."""
    similarity = F.normalize(val_x, dim=1) @ F.normalize(train_x, dim=1).t()
    top, index = similarity.topk(min(k, len(train_x)), dim=1)
    votes = torch.zeros(len(val_x), num_classes).scatter_add_(1, train_y[index], (top / temperature).exp())
    return float((votes.argmax(1) == val_y).float().mean())


def _labeled_batches(dataset, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b[0], torch.as_tensor(b[1]).long()) for b in DataLoader(dataset, batch_size=batch_size, shuffle=False)]


def feature_scorers(module) -> dict[str, Callable[[dict], dict[str, float]]]:
    """``probe_per_cell`` and ``knn`` on each cell's frozen features, BN recalibrated on all training images."""
    network, batch = module.network, module.strategy.batch_size or 64
    train = _labeled_batches(module.train_base, batch)
    val = _labeled_batches(module.val_base, batch)
    train_y, val_y = torch.cat([y for _, y in train]), torch.cat([y for _, y in val])
    classes = int(max(train_y.max(), val_y.max())) + 1

    @torch.no_grad()
    def features(arch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        activate_path(network, arch)
        with recalibrated_bn(network, network.embed, [x for x, _ in train]):
            return (torch.cat([network.embed(x) for x, _ in train]).float(),
                    torch.cat([network.embed(x) for x, _ in val]).float())

    def score(arch: dict) -> dict[str, float]:
        train_x, val_x = features(arch)
        return {'probe_per_cell': fit_probe(train_x, train_y, val_x, val_y, classes),
                'knn': knn_accuracy(train_x, train_y, val_x, val_y, classes)}
    return {'features': score}


def linear_scorers(module) -> dict[str, Callable[[dict], dict[str, float]]]:
    """The run's linear evaluation and the same classifier with BN recalibrated on other / all training batches."""
    run = _selection_fitness(module, 'linear_eval')
    other = module.linear_evaluator()  # a fresh seeded loader: its first batches, not the ones after fit()'s steps
    every = module.linear_evaluator(bn_batches=max(1, len(module.train_base) // (module.strategy.batch_size or 64)))
    other.classifier = every.classifier = run.classifier

    def score(arch: dict) -> dict[str, float]:
        return {'linear_eval': run.accuracy(arch), 'linear_eval_other_bn': other.accuracy(arch),
                'linear_eval_all_bn': every.accuracy(arch)}
    return {'linear': score}


def _label_free(module, network, seed: int):
    strategy = module.strategy
    return probes.held_out_contrastive(network, module.val_base, count=len(module.val_base), seed=seed,
                                       temperature=strategy.temperature, config=strategy.views,
                                       stats=strategy.view_stats)


def label_free_scorers(module, view_seeds: Sequence[int]) -> tuple[dict[str, Callable], dict[int, Any]]:
    """The run's label-free criterion and, per view seed, the student's and the teacher's on all held-out images."""
    run = _selection_fitness(module, 'label_free')
    students = {seed: _label_free(module, module.network, seed) for seed in view_seeds}
    teachers = {seed: _label_free(module, module.teacher, seed) for seed in view_seeds} if module.teacher else {}

    def score(arch: dict) -> dict[str, float]:
        values = {'label_free': -run.scores(arch)['loss']}
        for seed, criterion in students.items():
            scores = criterion.scores(arch)
            values[f'label_free_seed{seed}'] = -scores['loss']
            values[f'label_free_seed{seed}_retrieval'] = scores['accuracy']
        for seed, criterion in teachers.items():
            values[f'label_free_teacher_seed{seed}'] = -criterion.scores(arch)['loss']
        return values
    return {'label_free': score}, students


def _exports(module, criteria: dict[int, Any], table) -> dict[str, dict[str, Any]]:
    """The strategy's own evolution (its settings and seed) with each view seed's label-free criterion."""
    found = {}
    try:
        for seed, criterion in criteria.items():
            module.selection_fitness = lambda criterion=criterion: (criterion, 'label_free')
            (arch, fitness), *_ = module.strategy.select(module)
            found[f'label_free_seed{seed}'] = exported_cell(arch, fitness, table)
    finally:
        del module.selection_fitness  # the instance attribute; the method shows through again
    return found


def _agreement(values: dict[str, np.ndarray], view_seeds: Sequence[int]) -> dict[str, float]:
    pairs = {'linear_eval vs linear_eval_other_bn': ('linear_eval', 'linear_eval_other_bn'),
             'linear_eval vs linear_eval_all_bn': ('linear_eval', 'linear_eval_all_bn')}
    first = view_seeds[0]
    for seed in view_seeds[1:]:
        pairs[f'label_free seed {first} vs {seed}'] = (f'label_free_seed{first}', f'label_free_seed{seed}')
    pairs['label_free (run) vs seed %d' % first] = ('label_free', f'label_free_seed{first}')
    return {name: float(kendalltau(values[a], values[b])[0]) for name, (a, b) in pairs.items()}


def run(run_dir: Path, count: int, seed: int, view_seeds: Sequence[int], exports: bool) -> dict[str, Any]:
    started = time.perf_counter()
    module, checkpoint = restore_module(load_run_config(run_dir), run_dir)
    scorers = linear_scorers(module)
    more, students = label_free_scorers(module, view_seeds)
    scorers.update(more, **feature_scorers(module))
    table, op_idx = nb.load_nb201_table(), sample_cells(count, seed)
    truth, groups = table.accuracies(op_idx), nb.params_on_valid_paths(op_idx)
    values, seconds = score_cells(scorers, op_idx)
    return {
        'run': str(run_dir), 'checkpoint': checkpoint.name, 'sample': count, 'seed': seed, 'view_seeds': view_seeds,
        'held_out_images': len(module.val_base), 'training_images': len(module.train_base),
        'criteria': {name: criterion_stats(v, truth, groups) for name, v in values.items()},
        'agreement_kendall_tau': _agreement(values, view_seeds),
        'exports': _exports(module, students, table) if exports else None,
        'wall_seconds': {**{f'score_{k}': v for k, v in seconds.items()}, 'total': time.perf_counter() - started},
        'cells': {'nb201_string': nb.op_indices_to_strings(op_idx), 'cifar10_test': truth.tolist(),
                  **{k: v.tolist() for k, v in values.items()}},
    }


def format_table(result: dict[str, Any]) -> str:
    lines = ['| criterion | Kendall tau | tau within equal size | top-1 cell acc |', '|---|---|---|---|']
    lines += [f'| {name} | {s["tau"]:.3f} | {s["tau_within_size"]:.3f} | {s["top1_acc"]:.2f} |'
              for name, s in result['criteria'].items()]
    lines += [f'\nagreement: {name} tau {value:.3f}' for name, value in result['agreement_kendall_tau'].items()]
    for name, cell in (result['exports'] or {}).items():
        lines.append(f'exported with {name}: {cell["nb201_string"]} {cell["cifar10_test"]:.2f}')
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    run_quality_bench('bench.pinas_criterion_noise',
                      lambda: run(args.run, args.sample, args.seed, args.view_seeds, args.exports), args.out,
                      format_table)


if __name__ == '__main__':
    main()
