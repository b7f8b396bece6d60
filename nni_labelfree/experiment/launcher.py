"""Start, resume or view an nnictl experiment from Python, follow it in the terminal, print a summary table.

``nni-labelfree experiment experiment_configs/quickstart.yml`` is what ``make run`` calls: it starts NNI's manager
and web UI (URL printed), waits for every trial, prints one row per trial (search experiments: data, seed, exported
architecture, its table accuracy, Kendall tau; retrain experiments: test accuracy, parameters, FLOPs), writes the
table as CSV and JSON next to the experiment, and stops the manager unless ``keep_ui`` is set.

- ``--resume <id>`` / ``--view <id>`` mirror ``nnictl resume`` / ``nnictl view`` (NNI's
  ``Experiment(config, id).resume()`` / ``Experiment(None, id).view()``): the id must be in NNI's experiment list
  (``~/nni-experiments/.experiment``) and stopped.
- ``--then-retrain <retrain config.yml | preset>`` chains a retrain experiment after a search
  (:mod:`nni_labelfree.experiment.launcher_chain`).
- GPU configs are checked and rewritten so NNI 3.0's local scheduler runs one trial per GPU
  (:mod:`nni_labelfree.experiment.gpu`); configurations that would wait forever are refused before starting.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from nni_labelfree.experiment.gpu import apply_gpu_dispatch
from nni_labelfree.experiment.launcher_summary import (COMBINED_COLUMNS, SUMMARY_COLUMNS, columns_for, print_table,
                                                       summarize_trials, write_summary)

__all__ = ['run_experiment', 'resume_experiment', 'view_experiment', 'load_experiment_config', 'summarize_trials',
           'known_experiment', 'ExperimentRun', 'SUMMARY_COLUMNS']

_logger = logging.getLogger(__name__)

_FINAL_TRIAL_STATES = {'SUCCEEDED', 'FAILED', 'USER_CANCELED', 'SYS_CANCELED', 'EARLY_STOPPED'}
_FINAL_EXPERIMENT_STATES = {'DONE', 'ERROR', 'STOPPED'}
_NO_MORE_TRIAL_STATES = {'NO_MORE_TRIAL', 'TUNER_NO_MORE_TRIAL'}
_SECOND_PORT_PLATFORMS = {'hybrid', 'remote', 'openpai', 'kubeflow', 'frameworkcontroller', 'adl'}


@dataclass
class ExperimentRun:
    """What one followed experiment left: its id, final status, summary rows and each trial's output folder."""

    id: str
    status: str
    rows: list[dict] = field(default_factory=list)
    columns: Sequence[str] = SUMMARY_COLUMNS
    trial_dirs: dict[str, Path] = field(default_factory=dict)
    summary_dir: Path | None = None
    config: Any = None


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
    except (AttributeError, TypeError, ValueError, AssertionError) as err:
        # NNI's loader leaves its global base path set when it fails; clear it so later loads work.
        from nni.experiment.config.utils import unset_base_path
        unset_base_path()
        reason = str(err) or f'a value out of range ({type(err).__name__}; e.g. a negative number)'
        raise ValueError(f'{path} is not a valid NNI experiment config: {reason}') from None
    return config


def _check_port_free(port: int, platform: str | None = None) -> None:
    ports = [port, port + 1] if platform in _SECOND_PORT_PLATFORMS else [port]
    for number in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # Like the manager's server (Node sets SO_REUSEADDR): a port left in TIME_WAIT by a stopped experiment
            # is free, a bound or listening one is not (binding, not connecting, catches a bound idle port).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(('', number))
            except OSError:
                extra = f' (the {platform} training service also needs port {port}+1)' if number != port else ''
                raise ValueError(f'Port {number} is in use{extra} (another NNI experiment?). Choose another with '
                                 f'--port, or stop the other experiment (nnictl stop --all).') from None


def _wait_port_free(port: int, seconds: float = 30.0) -> None:
    """The manager of the previous experiment may hold the port for a moment after it stopped."""
    deadline = time.time() + seconds
    while True:
        try:
            return _check_port_free(port)
        except ValueError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


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


def _use_this_python() -> None:
    """Trials run the first ``python3`` on PATH (nni3.md): make it this interpreter, with its packages."""
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get('PATH', '').split(os.pathsep)[0] != bin_dir:
        os.environ['PATH'] = bin_dir + os.pathsep + os.environ.get('PATH', '')


def _prepare(config, port: int) -> None:
    """Every check that can fail, before the manager starts."""
    _check_port_free(port, config.training_service.platform)
    for note in apply_gpu_dispatch(config):
        print(f'GPU dispatch: {note}', flush=True)
    _use_this_python()


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


def _trial_dirs(experiment, workdir: Path) -> dict[str, Path]:
    """Each trial's output folder (local training service: ``<workdir>/<id>/environments/<env>/trials/<trial>``)."""
    dirs = {}
    for job in experiment.list_trial_jobs():
        log_path = getattr(job, 'logPath', None)
        default = workdir / experiment.id / 'environments' / 'local-env' / 'trials' / job.trialJobId
        dirs[job.trialJobId] = Path(log_path) if log_path and Path(log_path).is_dir() else default
    return dirs


def _keep_ui_up(port: int) -> None:
    print(f'Web UI kept up at http://localhost:{port}; press Ctrl-C to stop.', flush=True)
    while True:
        time.sleep(3600)


def _follow(experiment, config, port: int, keep_ui: bool, poll_seconds: float,
            timeout: float | None) -> ExperimentRun:
    """Wait for the experiment, print and save its summary, stop it (after Ctrl-C when ``keep_ui``)."""
    print(f'NNI web UI: http://localhost:{port}  (experiment {experiment.id})', flush=True)
    columns = columns_for(config)
    run = ExperimentRun(experiment.id, 'INTERRUPTED', columns=columns, config=config)
    try:
        run.status = _wait(experiment, poll_seconds, timeout)
        run.rows = summarize_trials(experiment)  # columns_for(experiment.config)
        workdir = Path(config.canonical_copy().experiment_working_directory).expanduser()
        run.trial_dirs = _trial_dirs(experiment, workdir)
        print(f'\nExperiment {experiment.id} finished with status {run.status}:')
        print_table(run.rows, columns)
        run.summary_dir = workdir / experiment.id
        write_summary(run.rows, run.summary_dir, columns)
        print(f'\nSummary written to {run.summary_dir}/summary.csv and summary.json', flush=True)
        if keep_ui:
            _keep_ui_up(port)
    except KeyboardInterrupt:
        print('Stopping the experiment.', flush=True)
        run.rows, run.status = [], 'INTERRUPTED'
    finally:
        experiment.stop()
    return run


@contextlib.contextmanager
def _patient_start_check(seconds: int = 30):
    """NNI gives a new manager 3 s to answer (``_check_rest_server(port, retry=3)`` in nni/experiment/launcher.py);
    Node needs longer on a busy machine (seen often on this project's shared 2-core machines): allow ``seconds``."""
    from nni.experiment import launcher as nni_launcher
    original = getattr(nni_launcher, '_check_rest_server', None)
    if original is None:  # another NNI version: keep its own check
        yield
        return
    nni_launcher._check_rest_server = functools.partial(original, retry=seconds)
    try:
        yield
    finally:
        nni_launcher._check_rest_server = original


def _start_with_retries(make_experiment, start, port: int, attempts: int = 3):
    """Start an experiment, waiting up to 30 s for the manager; retry when it still did not answer."""
    import atexit
    from requests.exceptions import RequestException as ManagerNotAnswering  # refused, timed out, half-started
    for attempt in range(1, attempts + 1):
        experiment = make_experiment()
        try:
            with _patient_start_check():
                start(experiment)
            return experiment
        except ManagerNotAnswering as err:
            atexit.unregister(experiment.stop)
            if attempt == attempts:
                raise RuntimeError(f'NNI manager did not answer on port {port} after {attempts} starts ({err}); see '
                                   f'log/nnimanager.log in the experiment folder.') from None
            print(f'NNI manager was slow to answer on port {port} ({type(err).__name__}); starting again '
                  f'({attempt}/{attempts - 1}).', flush=True)
            _wait_port_free(port)


def _start_and_follow(config, port: int, keep_ui: bool, poll_seconds: float, timeout: float | None) -> ExperimentRun:
    from nni.experiment import Experiment
    experiment = _start_with_retries(lambda: Experiment(config), lambda e: e.start(port), port)
    return _follow(experiment, config, port, keep_ui, poll_seconds, timeout)


def run_experiment(config_path: str | Path, port: int = 8080, keep_ui: bool = False, poll_seconds: float = 3.0,
                   timeout: float | None = None, then_retrain: str | None = None,
                   retrain_seeds: Sequence[int] | None = None, retrain_set: Sequence[str] = ()) -> list[dict]:
    """Start the experiment in ``config_path``, wait for it, print and save the summary; returns its rows.

    With ``then_retrain`` (a retrain experiment YAML or a retrain preset name), a retrain experiment over every
    SUCCEEDED trial's ``arch.json`` x ``retrain_seeds`` follows on the same port, and the combined rows (column
    ``stage``: search / retrain) are returned. Bad input raises ``ValueError``/``FileNotFoundError`` before any
    manager starts.
    """
    config = load_experiment_config(config_path)
    spec = _prepare_chain(then_retrain, retrain_seeds, retrain_set)
    _drop_unavailable_image_folder(config)
    _prepare(config, port)
    run = _start_and_follow(config, port, keep_ui and spec is None, poll_seconds, timeout)
    if spec is None:
        return run.rows
    return _chain_retrain(spec, run, port, keep_ui, poll_seconds, timeout)


def _prepare_chain(then_retrain, retrain_seeds, retrain_set):
    if then_retrain is None:
        if retrain_seeds or retrain_set:
            raise ValueError('--retrain-seeds/--retrain-set only apply with --then-retrain <retrain config or preset>.')
        return None
    from nni_labelfree.experiment.launcher_chain import prepare_retrain
    return prepare_retrain(then_retrain, retrain_seeds, retrain_set)


def _chain_retrain(spec, search: ExperimentRun, port: int, keep_ui: bool, poll_seconds: float,
                   timeout: float | None) -> list[dict]:
    from nni_labelfree.experiment.launcher_chain import build_retrain_config, combined_rows
    if search.status == 'INTERRUPTED':
        return []
    retrain_path = build_retrain_config(spec, search)
    print(f'\nRetraining the exported architectures: {retrain_path}', flush=True)
    config = load_experiment_config(retrain_path)
    _wait_port_free(port)
    _prepare(config, port)
    retrain = _start_and_follow(config, port, keep_ui, poll_seconds, timeout)
    rows = combined_rows(search, retrain)
    print('\nSearch and retrain:')
    print_table(rows, COMBINED_COLUMNS)
    if retrain.summary_dir is not None:
        write_summary(rows, retrain.summary_dir, COMBINED_COLUMNS, name='combined_summary')
        print(f'\nCombined summary written to {retrain.summary_dir}/combined_summary.csv and .json', flush=True)
    return rows


def known_experiment(experiment_id: str) -> dict:
    """NNI's record of a stopped experiment (``~/nni-experiments/.experiment``), or a clear error."""
    from nni.tools.nnictl.config_utils import Experiments
    from nni.tools.nnictl.nnictl_utils import update_experiment
    update_experiment()  # marks experiments whose manager process is gone as STOPPED
    manifest = Experiments()
    experiments = manifest.get_all_experiments()
    record = experiments.get(experiment_id)
    if not isinstance(record, dict):
        recent = ', '.join(list(experiments)[-5:]) or 'none'
        raise ValueError(f'Unknown experiment id {experiment_id!r}: NNI\'s experiment list '
                         f'({manifest.experiment_file}) has no such id (most recent: {recent}). '
                         f'`nnictl experiment list --all` lists them all.')
    if record.get('status') != 'STOPPED':
        raise ValueError(f'Experiment {experiment_id} is still running (web UI http://localhost:{record.get("port")}); '
                         f'open it there, or stop it first with `nnictl stop {experiment_id}`.')
    folder = Path(record.get('logDir') or '~/nni-experiments').expanduser() / experiment_id
    if not (folder / 'db').is_dir():
        raise FileNotFoundError(f'Experiment {experiment_id} is listed but its folder {folder} (with db/) is gone; '
                                f'it cannot be resumed or viewed. Remove it with '
                                f'`nnictl experiment delete {experiment_id}`.')
    return record


def resume_experiment(experiment_id: str, port: int = 8080, keep_ui: bool = False, poll_seconds: float = 3.0,
                      timeout: float | None = None, then_retrain: str | None = None,
                      retrain_seeds: Sequence[int] | None = None, retrain_set: Sequence[str] = ()) -> list[dict]:
    """Resume a stopped experiment (``nnictl resume <id>``), follow it to the end, print and save the summary."""
    import nni.experiment
    from nni.experiment.launcher import get_stopped_experiment_config
    record = known_experiment(experiment_id)
    spec = _prepare_chain(then_retrain, retrain_seeds, retrain_set)
    config = get_stopped_experiment_config(experiment_id, record.get('logDir') or None)
    _prepare(config, port)
    experiment = _start_with_retries(lambda: nni.experiment.Experiment(config, id=experiment_id),
                                     lambda e: e.resume(port=port, wait_completion=False), port)
    run = _follow(experiment, config, port, keep_ui and spec is None, poll_seconds, timeout)
    return run.rows if spec is None else _chain_retrain(spec, run, port, keep_ui, poll_seconds, timeout)


def view_experiment(experiment_id: str, port: int = 8080, keep_ui: bool = True) -> list[dict]:
    """Serve a stopped experiment's web UI read-only (``nnictl view <id>``) and print its summary table.

    With ``keep_ui`` the UI stays up until Ctrl-C; otherwise the manager stops once the table is printed.
    """
    import nni.experiment
    known_experiment(experiment_id)
    _check_port_free(port)
    experiment = _start_with_retries(lambda: nni.experiment.Experiment(None, id=experiment_id),
                                     lambda e: e.view(port=port, non_blocking=True), port)
    rows: list[dict] = []
    try:
        print(f'NNI web UI (view only): http://localhost:{port}  (experiment {experiment_id})', flush=True)
        rows = summarize_trials(experiment)
        print_table(rows, columns_for(experiment.config))
        if keep_ui:
            _keep_ui_up(port)
    except KeyboardInterrupt:
        pass
    finally:
        experiment.stop()
    return rows
