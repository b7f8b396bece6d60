"""Collect a finished quality experiment's trials into one JSON: exported cell, table accuracy and per-epoch curves.

The quality benchmarks of the DARTS family (``experiment_configs/unrealnas_quality.yml``,
``experiment_configs/unnas_quality.yml``) run as NNI experiments; every trial's output folder holds the search's
``config.json``, ``metrics.json`` (one row per epoch) and ``arch.json``. This script reads those folders and writes,
per trial, the tuned parameters, the exported NAS-Bench-201 string and its table accuracy, the number of epochs
that fitted in the budget, the skip-connection count and the exported cell's accuracy after every epoch, the first
and last training loss, and the wall time.

    python -m bench.collect_trials ~/nni-experiments/<id> --keys unreal_data,algorithm \\
        --output bench/results/unrealnas_quality.json --note "..."
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from bench.common import emit_json

__all__ = ['collect_trials', 'trial_row']

_logger = logging.getLogger(__name__)

CURVES = {'skip_curve': 'skip_connections', 'exported_acc_curve': 'exported_acc', 'train_acc_curve': 'train_acc'}


def trial_row(folder: Path, keys: list[str]) -> dict[str, Any] | None:
    """One trial's summary, or None when the trial left no ``arch.json`` (it failed or was stopped)."""
    arch_file = folder / 'arch.json'
    if not arch_file.exists():
        _logger.warning('%s has no arch.json: skipped (failed or stopped trial)', folder)
        return None
    config = json.loads((folder / 'config.json').read_text())
    result = json.loads(arch_file.read_text())
    history = json.loads((folder / 'metrics.json').read_text())
    row: dict[str, Any] = {'trial': folder.name, **{k: config.get(k) for k in keys},
                           'nb201_string': result.get('nb201_string'), 'test_acc': result.get('test_acc'),
                           'skip_connections': result.get('skip_connections'), 'epochs_done': len(history)}
    for name, metric in CURVES.items():
        if history and metric in history[0]:
            row[name] = [round(float(h[metric]), 4) for h in history]
    if history:
        row['train_loss_first_last'] = [float(history[0]['train_loss']), float(history[-1]['train_loss'])]
    row['wall_time'] = result.get('wall_time')
    return row


def collect_trials(experiment_dir: Path, keys: list[str]) -> list[dict[str, Any]]:
    """Rows of every trial under ``experiment_dir`` (an NNI experiment folder), best table accuracy first."""
    trials = experiment_dir / 'environments' / 'local-env' / 'trials'
    if not trials.is_dir():
        raise FileNotFoundError(f'{trials} does not exist: pass the folder of a local NNI experiment, '
                                'e.g. ~/nni-experiments/<experiment id>.')
    rows = [r for r in (trial_row(f, keys) for f in sorted(trials.iterdir()) if f.is_dir()) if r is not None]
    return sorted(rows, key=lambda r: -(r['test_acc'] or 0.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('experiment_dir', type=Path)
    parser.add_argument('--keys', default='', help='comma-separated config keys the trials differ in')
    parser.add_argument('--output', type=Path, required=True)
    parser.add_argument('--command', default='', help='the command that ran the experiment (recorded)')
    parser.add_argument('--note', default='')
    args = parser.parse_args(argv)
    rows = collect_trials(args.experiment_dir.expanduser(), [k for k in args.keys.split(',') if k])
    for row in rows:
        print(f"{row['trial']}  {' '.join(str(row[k]) for k in args.keys.split(',') if k):<16} "
              f"{row['test_acc']!s:<10} epochs {row['epochs_done']:<3} skips {row.get('skip_curve')}  "
              f"{row['nb201_string']}")
    emit_json({'command': args.command, 'note': args.note, 'rows': rows}, args.output)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
