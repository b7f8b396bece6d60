"""The summary table of an NNI experiment: one row per trial, from the REST API, printed and written as CSV/JSON.

Search experiments (``nni_labelfree.experiment.trial``) get :data:`SUMMARY_COLUMNS`, retrain experiments
(``nni_labelfree.experiment.retrain``) :data:`RETRAIN_COLUMNS` (test accuracy after training from scratch, the
NAS-Bench-201 table's accuracy of the cell, parameters, FLOPs, and ``source``: the search trial whose ``arch.json``
was retrained), and a chained
search-then-retrain run prints both stages in one table with :data:`COMBINED_COLUMNS`.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Sequence

__all__ = ['SUMMARY_COLUMNS', 'RETRAIN_COLUMNS', 'COMBINED_COLUMNS', 'columns_for', 'summarize_trials',
           'print_table', 'write_summary', 'trial_parameters', 'final_metric']

_logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ('trial', 'status', 'data', 'seed', 'arch', 'test_acc', 'kendall_tau', 'train_loss', 'wall_time')
RETRAIN_COLUMNS = ('trial', 'status', 'source', 'data', 'seed', 'arch', 'test_acc', 'table_acc', 'params', 'flops',
                   'wall_time')
COMBINED_COLUMNS = ('stage', 'trial', 'status', 'source', 'data', 'seed', 'arch', 'test_acc', 'table_acc', 'params',
                    'flops', 'kendall_tau', 'wall_time')
RETRAIN_MODULE = 'nni_labelfree.experiment.retrain'


def columns_for(config) -> tuple[str, ...]:
    """The summary columns that suit an experiment config: retrain columns when its trials run the retrain command,
    else the search columns with every key the tuner varies (e.g. ``unreal_data``, ``algorithm``, ``task``) after
    ``status``, and the skip-connection count for DARTS-family strategies."""
    command = getattr(config, 'trial_command', None) or ''
    if RETRAIN_MODULE in command:
        return RETRAIN_COLUMNS
    tuned = [k for k in (getattr(config, 'search_space', None) or {}) if k not in SUMMARY_COLUMNS]
    columns = list(SUMMARY_COLUMNS[:2]) + tuned + list(SUMMARY_COLUMNS[2:])
    if any(f'strategy={name}' in command for name in ('unnas', 'sgas', 'unrealnas')):
        columns.insert(columns.index('train_loss'), 'skip_connections')
    return tuple(columns)


def final_metric(metrics: list) -> dict:
    """The FINAL metric among a trial's ``TrialMetricData`` as a dict (NNI encodes it as JSON once or twice)."""
    for metric in metrics:
        if metric.type == 'FINAL':
            value = json.loads(metric.data) if isinstance(metric.data, str) else metric.data
            value = json.loads(value) if isinstance(value, str) else value
            return value if isinstance(value, dict) else {'default': value}
    return {}


def trial_parameters(job) -> dict:
    """The parameters NNI's tuner gave a trial (``{}`` before it asked for them)."""
    return job.hyperParameters[0].parameters if job.hyperParameters else {}


def _source_trial(arch_param: Any) -> str:
    """A retrained architecture's search trial: the folder holding ``.../trials/<id>/arch.json``."""
    if not isinstance(arch_param, str) or not arch_param.endswith('arch.json'):
        return ''
    return Path(arch_param).parent.name


def _row(job, final: dict, columns: Sequence[str]) -> dict[str, Any]:
    params = trial_parameters(job)
    # A trial's own report wins: NNI 3.0 may hand queued parameters to another trial than it records.
    row = {c: final.get(c, params.get(c, '')) for c in columns}
    row.update({k: v for k, v in (('trial', job.trialJobId), ('status', job.status)) if k in columns})
    if 'source' in columns:
        row['source'] = final.get('source') or _source_trial(params.get('arch'))
    return row


def summarize_trials(experiment, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per trial (sorted by trial id) with its parameters, status and final metrics.

    ``columns`` default to :func:`columns_for` the experiment's config (search or retrain columns).
    """
    columns = columns or columns_for(getattr(experiment, 'config', None))
    all_metrics = experiment.get_job_metrics()
    return [_row(job, final_metric(all_metrics.get(job.trialJobId, [])), columns)
            for job in sorted(experiment.list_trial_jobs(), key=lambda j: j.trialJobId)]


def _format_cell(value: Any) -> str:
    if isinstance(value, float):
        if abs(value) >= 1e5:
            return f'{value:.4g}'
        return str(int(value)) if value.is_integer() and abs(value) >= 1e3 else f'{value:.4f}'
    return str(value)


def print_table(rows: list[dict], columns: Sequence[str] = SUMMARY_COLUMNS) -> str:
    """A plain-text table of the rows (also returned)."""
    cells = [[_format_cell(r.get(c, '')) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ['  '.join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ['  '.join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    text = '\n'.join(lines)
    print(text, flush=True)
    return text


def write_summary(rows: list[dict], directory: Path, columns: Sequence[str] = SUMMARY_COLUMNS,
                  name: str = 'summary') -> None:
    """``<directory>/<name>.json`` (the rows) and ``<name>.csv`` (the columns)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f'{name}.json').write_text(json.dumps(rows, indent=2) + '\n')
    with open(directory / f'{name}.csv', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
