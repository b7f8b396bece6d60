"""Start an nnictl experiment from Python, follow it in the terminal, and print a summary table.

``nni-labelfree experiment experiment_configs/quickstart.yml`` is what ``make run`` calls: it starts NNI's manager
and web UI (URL printed), waits for every trial, prints one row per trial (data, seed, exported NAS-Bench-201
string, its CIFAR-10 test accuracy, Kendall tau of the angle ranking, wall time), writes the table as CSV and JSON
next to the experiment, and stops the manager unless ``keep_ui`` is set.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = ['run_experiment', 'load_experiment_config', 'summarize_trials']

_logger = logging.getLogger(__name__)

_FINAL_TRIAL_STATES = {'SUCCEEDED', 'FAILED', 'USER_CANCELED', 'SYS_CANCELED', 'EARLY_STOPPED'}
_FINAL_EXPERIMENT_STATES = {'DONE', 'ERROR', 'STOPPED'}
_NO_MORE_TRIAL_STATES = {'NO_MORE_TRIAL', 'TUNER_NO_MORE_TRIAL'}
SUMMARY_COLUMNS = ('trial', 'status', 'data', 'seed', 'arch', 'test_acc', 'kendall_tau', 'train_loss', 'wall_time')


def load_experiment_config(path: str | Path):
    """Read an nnictl YAML (``safe_load``) and validate it with NNI's own schema; paths resolve against the file."""
    from nni.experiment.config import ExperimentConfig
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Experiment config {path} does not exist; the configs shipped are in experiment_configs/.')
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f'{path} must hold a YAML mapping of nnictl config keys, got {type(raw).__name__}.')
    try:
        config = ExperimentConfig.load(str(path))
        config.validate()
    except (AttributeError, TypeError, ValueError) as err:
        # NNI's loader leaves its global base path set when it fails; clear it so later loads work.
        from nni.experiment.config.utils import unset_base_path
        unset_base_path()
        raise ValueError(f'{path} is not a valid NNI experiment config: {err}') from None
    return config


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(('', port))  # binding, not connecting: a bound but idle port is taken too
        except OSError:
            raise ValueError(f'Port {port} is in use (another NNI experiment?). Choose another with --port, or stop '
                             f'the other experiment (nnictl stop --all).') from None


def _set_flag(command: str, key: str) -> str | None:
    match = re.search(rf'--set[ =]{key}=(\S+)', command)
    return match.group(1) if match else None


def _drop_unavailable_image_folder(config) -> None:
    """The quickstart's real-image trials need the CIFAR-10 JPEG archive; without it, say so and keep noise only."""
    space = config.search_space or {}
    data = space.get('data', {})
    root = _set_flag(config.trial_command, 'data_root')
    if 'imagefolder' not in data.get('_value', []) or root is None:
        return
    resolved = (Path(config.canonical_copy().trial_code_directory) / root).resolve()
    if resolved.exists():
        return
    remaining = [d for d in data['_value'] if d != 'imagefolder']
    print(f'NOTE: {resolved} is absent, so the real-image (imagefolder) trials are left out; '
          f'running data={remaining} only. Pass --set data_root=<folder or .tar.gz> to use your own images.')
    config.search_space = {**space, 'data': {**data, '_value': remaining}}


def _final_metric(metrics: list) -> dict:
    for metric in metrics:
        if metric.type == 'FINAL':
            value = json.loads(metric.data) if isinstance(metric.data, str) else metric.data
            value = json.loads(value) if isinstance(value, str) else value
            return value if isinstance(value, dict) else {'default': value}
    return {}


def summarize_trials(experiment) -> list[dict[str, Any]]:
    """One row per trial with its parameters, status and final metrics."""
    rows = []
    all_metrics = experiment.get_job_metrics()
    for job in sorted(experiment.list_trial_jobs(), key=lambda j: j.trialJobId):
        params = job.hyperParameters[0].parameters if job.hyperParameters else {}
        final = _final_metric(all_metrics.get(job.trialJobId, []))
        # A trial's own report wins: NNI 3.0 may hand queued parameters to another trial than it records.
        rows.append({'trial': job.trialJobId, 'status': job.status, 'data': final.get('data', params.get('data', '')),
                     'seed': final.get('seed', params.get('seed', '')), 'arch': final.get('arch', ''),
                     'test_acc': final.get('test_acc', ''), 'kendall_tau': final.get('kendall_tau', ''),
                     'train_loss': final.get('train_loss', ''), 'wall_time': final.get('wall_time', '')})
    return rows


def _format_cell(value: Any) -> str:
    return f'{value:.4f}' if isinstance(value, float) else str(value)


def print_table(rows: list[dict], columns=SUMMARY_COLUMNS) -> str:
    """A plain-text table of the rows (also returned)."""
    cells = [[_format_cell(r.get(c, '')) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ['  '.join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ['  '.join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    text = '\n'.join(lines)
    print(text, flush=True)
    return text


def _write_summary(rows: list[dict], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / 'summary.json').write_text(json.dumps(rows, indent=2) + '\n')
    with open(directory / 'summary.csv', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)


def _wait(experiment, poll_seconds: float, timeout: float | None) -> str:
    seen: dict[str, str] = {}
    start = time.time()
    while True:
        status = experiment.get_status()
        jobs = experiment.list_trial_jobs()
        for job in jobs:
            if seen.get(job.trialJobId) != job.status:
                seen[job.trialJobId] = job.status
                print(f'[{time.time() - start:6.0f}s] trial {job.trialJobId}: {job.status}', flush=True)
        all_final = jobs and all(j.status in _FINAL_TRIAL_STATES for j in jobs)
        if status in _FINAL_EXPERIMENT_STATES or (status in _NO_MORE_TRIAL_STATES and all_final):
            return status
        if timeout is not None and time.time() - start > timeout:
            print(f'Timed out after {timeout:.0f}s; stopping the experiment.', flush=True)
            return 'TIMEOUT'
        time.sleep(poll_seconds)


def run_experiment(config_path: str | Path, port: int = 8080, keep_ui: bool = False, poll_seconds: float = 3.0,
                   timeout: float | None = None) -> list[dict]:
    """Start the experiment in ``config_path``, wait for it, print and save the summary; returns its rows."""
    from nni.experiment import Experiment
    config = load_experiment_config(config_path)
    _check_port_free(port)
    _drop_unavailable_image_folder(config)
    # Trials run the first `python3` on PATH (nni3.md): make it this interpreter, with its packages.
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get('PATH', '').split(os.pathsep)[0] != bin_dir:
        os.environ['PATH'] = bin_dir + os.pathsep + os.environ.get('PATH', '')
    experiment = Experiment(config)
    experiment.start(port)
    print(f'NNI web UI: http://localhost:{port}  (experiment {experiment.id})', flush=True)
    try:
        status = _wait(experiment, poll_seconds, timeout)
        rows = summarize_trials(experiment)
        print(f'\nExperiment {experiment.id} finished with status {status}:')
        print_table(rows)
        out = Path(config.canonical_copy().experiment_working_directory).expanduser() / experiment.id
        _write_summary(rows, out)
        print(f'\nSummary written to {out}/summary.csv and summary.json', flush=True)
        if keep_ui:
            print(f'Web UI kept up at http://localhost:{port}; press Ctrl-C to stop.', flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print('Stopping the experiment.', flush=True)
        rows = []
    finally:
        experiment.stop()
    return rows
