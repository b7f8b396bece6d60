"""Search quality of RLNAS on NAS-Bench-201 at a fixed CPU budget, next to the training-free rules.

One run trains one supernet (data source, seed, wall-clock budget) and, after every epoch, scores all 15,625 cells
with several angle parameterisations of the same weights. For each it records the Kendall tau against the table's
``cifar10_test``, the tau within groups of equal size (cells with the same parameter count on valid paths), and
the table accuracy of the top-angle cell. The training-free rules of calibration.md are computed once.

    python -m bench.search_quality --data imagefolder --seed 0 --minutes 15

``--rescore RUN [RUN ...]`` scores the saved final supernet of finished runs (``checkpoints/supernet_final.pt``)
with every parameterisation, without training: a new parameterisation measured on old runs. It writes
``rescore.json`` next to each run's ``quality.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from nni_labelfree.benchmarks import nasbench201 as nb
from nni_labelfree.experiment.config import resolve_config
from nni_labelfree.experiment.search import run_search, with_keys_added_later
from nni_labelfree.metrics.angle import AnglePolicy, angle_scorer
from nni_labelfree.metrics.correlation import kendall_tau, tau_within_groups, top1_truth
from nni_labelfree.search_spaces import create_space

from bench.common import load_saved_supernet

SHARED = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
POLICIES = {
    'rlnas': AnglePolicy(),                                   # RLNAS code: fixed layers, pool [C,3,3], skip empty
    'no_fixed': AnglePolicy(fixed='none'),                    # candidate ops only
    'pool4d': AnglePolicy(pool='const4d'),                    # the paper text's 4-D pool tensor
    'no_fixed_pool4d': AnglePolicy(fixed='none', pool='const4d'),
    'skip_identity': AnglePolicy(skip='identity'),            # RLNAS's DARTS/MobileNet skip, eye(C)
    'no_fixed_skip_identity': AnglePolicy(fixed='none', skip='identity'),
    'cell_mean': AnglePolicy(edges='cell_mean'),              # each op averaged over its cell's edges
    'no_fixed_cell_mean': AnglePolicy(fixed='none', edges='cell_mean'),
}


def rule_metrics(truth: np.ndarray, op_idx: np.ndarray, groups: np.ndarray) -> dict:
    """Training-free structural rules (calibration.md) with the same statistics as the angle."""
    rules = {'convs_on_valid_paths': nb.count_convs_on_valid_paths(op_idx),
             'params_on_valid_paths': nb.params_on_valid_paths(op_idx),
             'op_type_order': nb.op_type_order_score(op_idx)}
    return {name: _stats(score, truth, groups) for name, score in rules.items()}


def _stats(score: np.ndarray, truth: np.ndarray, groups: np.ndarray) -> dict:
    return {'tau': kendall_tau(score, truth), 'tau_within_size': tau_within_groups(score, truth, groups),
            'top1_acc': top1_truth(score, truth)}


def policy_stats(model: torch.nn.Module, initial: dict, truth: np.ndarray, groups: np.ndarray) -> dict:
    """:func:`_stats` of every policy in :data:`POLICIES`, all 15,625 cells scored on ``model``'s weights."""
    stats = {}
    for name, policy in POLICIES.items():
        scorer = angle_scorer(model, initial, policy=policy)
        stats[name] = _stats(scorer.angles(scorer.all_encodings()), truth, groups)
    return stats


class PolicySweep(pl.Callback):
    """After each epoch, the statistics of every policy in :data:`POLICIES` on the current supernet."""

    def __init__(self, truth: np.ndarray, groups: np.ndarray):
        self.truth, self.groups, self.epochs, self.start = truth, groups, [], time.time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        row = {'epoch': trainer.current_epoch + 1, 'step': trainer.global_step,
               'seconds': time.time() - self.start,
               'train_loss': float(trainer.callback_metrics.get('train_loss', float('nan'))),
               'train_acc': float(trainer.callback_metrics.get('train_acc', float('nan')))}
        row.update(policy_stats(pl_module.model, pl_module.initial_weights, self.truth, self.groups))
        self.epochs.append(row)
        logging.info('epoch %d (%.0fs): loss %.3f acc %.3f tau %s', row['epoch'], row['seconds'], row['train_loss'],
                     row['train_acc'], {n: round(row[n]['tau'], 3) for n in POLICIES})


def rescore(run: Path, truth: np.ndarray, groups: np.ndarray) -> dict:
    """Every policy of :data:`POLICIES` on the final supernet a finished RLNAS NAS-Bench-201 run saved.

    The policies are this bench's fixed set, not the run's own ``angle_*`` settings: for a run with RLNAS's default
    angle (every ``bench.search_quality`` run) the ``rlnas`` entry is the run's own ranking.
    """
    config_path, saved = Path(run) / 'config.json', Path(run) / 'checkpoints' / 'supernet_final.pt'
    if not config_path.is_file() or not saved.is_file():
        raise ValueError(f'{run} lacks config.json or checkpoints/supernet_final.pt; pass the --out folder of a '
                         'finished bench.search_quality run (or the --output of nni-labelfree search).')
    config = resolve_config(with_keys_added_later(json.loads(config_path.read_text())))
    if config.strategy != 'rlnas' or config.space != 'nasbench201':
        raise ValueError(f'{run} holds a {config.strategy} search on {config.space}; --rescore needs RLNAS on '
                         'nasbench201 (the table gives the ground truth).')
    space = create_space('nasbench201', channels=config.channels, cells_per_stage=config.cells_per_stage,
                         num_classes=config.num_classes)
    try:
        initial, final = load_saved_supernet(run)
        space.load_state_dict(final)
    except Exception as err:  # unreadable file, or weights of another space than config.json describes
        raise ValueError(f'{saved} cannot be loaded into the space {run}/config.json describes '
                         f'({type(err).__name__}: {str(err)[:200]}); was the folder written by another run?') from err
    return {'run': str(run), 'config': config.to_dict(), **policy_stats(space, initial, truth, groups)}


def _rescore_main(runs: list[Path]) -> None:
    truth, groups = nb.load_nb201_table().values('cifar10_test'), nb.params_on_valid_paths(nb.all_op_indices())
    for run in runs:
        try:
            result = rescore(run, truth, groups)
        except ValueError as err:
            raise SystemExit(f'search_quality --rescore: {err}') from err
        (Path(run) / 'rescore.json').write_text(json.dumps(result, indent=2) + '\n')
        print(run, {name: round(result[name]['tau'], 3) for name in POLICIES})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    training = {'data': 'noise', 'seed': 0, 'minutes': 15.0, 'set_flags': [], 'num_images': 200, 'out': None}
    parser.add_argument('--data', choices=['imagefolder', 'noise'])
    parser.add_argument('--seed', type=int)
    parser.add_argument('--minutes', type=float)
    parser.add_argument('--set', dest='set_flags', action='append', metavar='KEY=VALUE')
    parser.add_argument('--num-images', type=int)
    parser.add_argument('--out')
    parser.add_argument('--rescore', nargs='+', type=Path, default=None, metavar='RUN',
                        help='score the saved supernets of finished runs instead of training (writes rescore.json)')
    args = parser.parse_args(argv)
    if args.rescore:
        given = [f'--{k.replace("_", "-")}' for k in training if getattr(args, k) is not None]
        if given:
            parser.error(f'--rescore scores finished runs as they were trained; drop {" ".join(given)}')
        warnings.filterwarnings('ignore')
        torch.set_num_threads(1)
        return _rescore_main(args.rescore)
    for key, default in training.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    warnings.filterwarnings('ignore')
    torch.set_num_threads(1)
    from nni_labelfree.experiment.trial import parse_set_flags
    overrides = {'data': args.data, 'seed': args.seed, 'max_minutes': args.minutes, 'epochs': 100000,
                 'num_images': args.num_images, 'channels': 16, 'cells_per_stage': 1, 'learning_rate': 0.1,
                 'weight_decay': 0.0, 'search': 'exhaustive', 'resume': False}  # a rerun starts over
    if args.data == 'imagefolder':
        overrides['data_root'] = str(SHARED / 'images' / 'cifar10_jpeg.tar.gz')
    config = resolve_config(overrides, parse_set_flags(args.set_flags))
    table = nb.load_nb201_table()
    truth, op_idx = table.values('cifar10_test'), nb.all_op_indices()
    groups = nb.params_on_valid_paths(op_idx)
    sweep = PolicySweep(truth, groups)
    tag = f'{args.data}_s{args.seed}'
    out_dir = Path(args.out or f'bench/results/search_quality/{tag}')
    result = run_search(config, out_dir, extra_callbacks=[sweep])
    summary = {'data': args.data, 'seed': args.seed, 'minutes': args.minutes, 'config': config.to_dict(),
               'exported': result.get('nb201_string'), 'exported_acc': result.get('test_acc'),
               'final': sweep.epochs[-1] if sweep.epochs else None, 'epochs': sweep.epochs,
               'rules': rule_metrics(truth, op_idx, groups)}
    (out_dir / 'quality.json').write_text(json.dumps(summary, indent=2) + '\n')
    print(json.dumps({k: summary[k] for k in ('data', 'seed', 'exported', 'exported_acc', 'final')}, indent=1))


if __name__ == '__main__':
    main()
