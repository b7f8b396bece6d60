"""``nni-labelfree experiment``: --resume/--view, --then-retrain, retrain summary columns, bad input.

Fast tests drive the launcher with a fake NNI experiment that "runs" the config it is given (one SUCCEEDED trial per
grid point of its searchSpace), so the chained retrain is checked against the config the launcher generated. The
slow tests use NNI's real manager: a tiny RLNAS search chained with a tiny retrain (both trials SUCCEEDED in the
REST API), and resume/view of a stopped experiment.
"""
from __future__ import annotations

import atexit
import itertools
import json
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import nni.experiment
import nni.tools.nnictl.config_utils as nnictl_config_utils
import nni.tools.nnictl.nnictl_utils as nnictl_utils

from nni_labelfree.experiment import cli, launcher
from nni_labelfree.experiment.launcher_chain import prepare_retrain, retrain_config_dict, search_architectures
from nni_labelfree.experiment.launcher_summary import COMBINED_COLUMNS, RETRAIN_COLUMNS, SUMMARY_COLUMNS

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'
FAKE_GPU_DIR = REPO / 'tests' / 'fake_gpu'
VENV_BIN = Path(sys.executable).parent
NB201_CELL = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|'


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def write_yaml(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def search_yaml(directory: Path, trial_flags: list[str], seeds=(0,), **top) -> Path:
    config = {'experimentName': 'tiny search', 'searchSpace': {'seed': {'_type': 'choice', '_value': list(seeds)}},
              'trialCommand': ' '.join(['python3 -m nni_labelfree.experiment.trial']
                                       + [f'--set {f}' for f in trial_flags]),
              'trialCodeDirectory': str(REPO), 'experimentWorkingDirectory': str(directory / 'experiments'),
              'trialConcurrency': 1, 'maxTrialNumber': len(seeds), 'maxExperimentDuration': '5m',
              'tuner': {'name': 'GridSearch'}, 'trainingService': {'platform': 'local', 'useActiveGpu': False}, **top}
    return write_yaml(directory / 'search.yml', config)


# --- a fake NNI experiment that runs its config's grid ----------------------------------------------------------------
class GridExperiment:
    """Stands in for ``nni.experiment.Experiment``: one SUCCEEDED trial per grid point of ``config.search_space``.

    A search trial (``nni_labelfree.experiment.trial``) writes ``arch.json`` and ``config.json`` into its folder
    and reports an NB201 cell; a retrain trial reports test accuracy, parameters and FLOPs.
    """
    made: list['GridExperiment'] = []

    def __init__(self, config, id=None):
        self.config, self.id, self.port, self.stopped = config, f'fake{len(GridExperiment.made)}', None, False
        self.jobs: list = []
        self.metrics: dict = {}
        GridExperiment.made.append(self)

    def start(self, port):
        self.port = port
        space = self.config.search_space
        for number, values in enumerate(itertools.product(*(spec['_value'] for spec in space.values()))):
            self._run_trial(f'T{self.id[-1]}{number}', dict(zip(space, values)))

    def _run_trial(self, trial_id: str, params: dict) -> None:
        workdir = Path(self.config.canonical_copy().experiment_working_directory)
        folder = workdir / self.id / 'environments' / 'local-env' / 'trials' / trial_id
        folder.mkdir(parents=True)
        if 'nni_labelfree.experiment.retrain' in self.config.trial_command:
            final = {'default': 70.0 + params['seed'], 'test_acc': 70.0 + params['seed'], 'params': 1.5e5,
                     'flops': 2.5e7, 'arch': NB201_CELL, 'seed': params['seed'], 'data': 'imagefolder'}
        else:
            (folder / 'arch.json').write_text(json.dumps({'nb201_string': NB201_CELL}))
            (folder / 'config.json').write_text(json.dumps({'space': 'nasbench201', 'seed': params['seed']}))
            final = {'default': 93.5, 'test_acc': 93.5, 'arch': NB201_CELL, 'seed': params['seed'], 'data': 'noise'}
        self.jobs.append(SimpleNamespace(trialJobId=trial_id, status='SUCCEEDED', logPath=str(folder),
                                         hyperParameters=[SimpleNamespace(parameters=params)]))
        self.metrics[trial_id] = [SimpleNamespace(type='FINAL', data=json.dumps(final))]

    def stop(self):
        self.port, self.stopped = None, True

    def get_status(self):
        return 'DONE'

    def list_trial_jobs(self):
        return list(self.jobs)

    def get_job_metrics(self):
        return dict(self.metrics)


@pytest.fixture
def grid_experiments(monkeypatch):
    GridExperiment.made = []
    monkeypatch.setattr(nni.experiment, 'Experiment', GridExperiment)
    monkeypatch.setenv('PATH', os.environ.get('PATH', ''))
    return GridExperiment.made


def test_then_retrain_a_preset_retrains_every_search_trial_over_the_seeds(tmp_path, grid_experiments, capsys):
    rows = launcher.run_experiment(search_yaml(tmp_path, ['data=noise'], seeds=[0, 1]), port=free_port(),
                                   poll_seconds=0, then_retrain='cpu', retrain_seeds=[3, 4],
                                   retrain_set=['data=imagefolder', 'epochs=1'])
    search, retrain = grid_experiments
    assert search.stopped and retrain.stopped
    command = retrain.config.trial_command
    assert command == ('python3 -m nni_labelfree.experiment.retrain --set preset=cpu --set space=nasbench201 '
                       '--set data=imagefolder --set epochs=1')
    arch_paths = retrain.config.search_space['arch']['_value']
    assert arch_paths == [str(Path(job.logPath) / 'arch.json') for job in search.jobs]
    assert retrain.config.search_space['seed']['_value'] == [3, 4]
    assert retrain.config.max_trial_number == 4 and retrain.config.tuner.name == 'GridSearch'
    assert [r['stage'] for r in rows] == ['search'] * 2 + ['retrain'] * 4
    assert tuple(rows[0]) == COMBINED_COLUMNS
    assert [(r['test_acc'], r['table_acc']) for r in rows[:2]] == [('', 93.5)] * 2  # search: table, not trained
    retrained = [r for r in rows if r['stage'] == 'retrain']
    assert sorted((r['source'], r['seed']) for r in retrained) == sorted(
        itertools.product([j.trialJobId for j in search.jobs], [3, 4]))
    assert {(r['test_acc'], r['params'], r['flops']) for r in retrained} == {(73.0, 1.5e5, 2.5e7), (74.0, 1.5e5, 2.5e7)}
    out_dir = tmp_path / 'experiments' / retrain.id
    assert json.loads((out_dir / 'combined_summary.json').read_text()) == rows
    assert json.loads((out_dir / 'summary.json').read_text())[0].keys() == set(RETRAIN_COLUMNS)
    assert 'Search and retrain:' in capsys.readouterr().out


def test_then_retrain_a_yaml_keeps_its_command_and_seeds(tmp_path, grid_experiments):
    launcher.run_experiment(search_yaml(tmp_path, ['data=noise']), port=free_port(), poll_seconds=0,
                            then_retrain=str(REPO / 'experiment_configs' / 'retrain_cpu.yml'))
    search, retrain = grid_experiments
    template = launcher.load_experiment_config(REPO / 'experiment_configs' / 'retrain_cpu.yml')
    assert retrain.config.trial_command == template.trial_command
    assert retrain.config.search_space['seed'] == template.search_space['seed']
    assert retrain.config.search_space['arch']['_value'] == [str(Path(search.jobs[0].logPath) / 'arch.json')]
    assert retrain.config.trial_concurrency == template.trial_concurrency
    generated = tmp_path / 'experiments' / search.id / 'retrain.yml'
    reloaded = launcher.load_experiment_config(generated)  # NNI's schema accepts what we wrote
    assert Path(reloaded.canonical_copy().trial_code_directory) == REPO
    assert Path(reloaded.canonical_copy().experiment_working_directory) == tmp_path / 'experiments'


def test_a_bad_retrain_yaml_is_refused_before_the_search_starts(tmp_path, grid_experiments):
    bad = write_yaml(tmp_path / 'bad_retrain.yml', {'trialCommand': 'python3 x.py', 'tunerr': {'name': 'GridSearch'}})
    with pytest.raises(ValueError, match='bad_retrain.yml is not a valid NNI experiment config.*tunerr'):
        launcher.run_experiment(search_yaml(tmp_path, ['data=noise']), port=free_port(), then_retrain=str(bad))
    assert grid_experiments == []


@pytest.mark.parametrize('kwargs, message', [
    (dict(then_retrain='no_such_preset'), r"Unknown retrain preset 'no_such_preset'.*'cpu'"),
    (dict(then_retrain='cpu', seeds=[]), r'--retrain-seeds expects one or more integers'),
    (dict(then_retrain='cpu', set_flags=['seed=2']), r"'seed' is chosen per trial.*--retrain-seeds"),
    (dict(then_retrain='cpu', set_flags=['epochs']), r'--retrain-set expects key=value'),
    (dict(then_retrain='missing.yml'), r'missing.yml does not exist'),
    (dict(then_retrain='a b'), r'neither a retrain experiment YAML'),
])
def test_retrain_options_are_checked(kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        prepare_retrain(kwargs.pop('then_retrain'), **kwargs)


def test_retrain_seeds_without_then_retrain_are_refused(tmp_path, grid_experiments):
    with pytest.raises(ValueError, match='only apply with --then-retrain'):
        launcher.run_experiment(search_yaml(tmp_path, ['data=noise']), port=free_port(), retrain_seeds=[1])
    assert grid_experiments == []


def test_only_succeeded_trials_with_an_arch_json_are_retrained(tmp_path):
    folders = {name: tmp_path / name for name in ('ok', 'failed', 'no_arch')}
    for name, folder in folders.items():
        folder.mkdir()
        if name != 'no_arch':
            (folder / 'arch.json').write_text('{}')
    run = launcher.ExperimentRun('exp1', 'DONE', trial_dirs=folders, rows=[
        {'trial': 'ok', 'status': 'SUCCEEDED'}, {'trial': 'failed', 'status': 'FAILED'},
        {'trial': 'no_arch', 'status': 'SUCCEEDED'}])
    assert search_architectures(run) == [folders['ok'] / 'arch.json']
    run.rows = run.rows[1:]
    with pytest.raises(ValueError, match=r'Nothing to retrain.*failed: FAILED, no_arch: SUCCEEDED'):
        search_architectures(run)


def test_mixed_spaces_leave_the_space_to_the_retrain_trial(tmp_path):
    paths = []
    for name, space in (('a', 'nasbench201'), ('b', 'darts')):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'config.json').write_text(json.dumps({'space': space}))
        paths.append(tmp_path / name / 'arch.json')
    search_config = launcher.load_experiment_config(search_yaml(tmp_path, ['data=noise']))
    config = retrain_config_dict(prepare_retrain('cpu'), search_config, 'exp1', paths)
    assert '--set space=' not in config['trialCommand'] and config['searchSpace']['seed']['_value'] == [0]


# --- summary columns ---------------------------------------------------------------------------------------------
def test_retrain_experiments_get_retrain_columns(tmp_path, grid_experiments):
    config = launcher.load_experiment_config(REPO / 'experiment_configs' / 'retrain_cpu.yml')
    config.search_space = {'arch': {'_type': 'choice', '_value': ['/x/trials/AbCdE/arch.json']},
                           'seed': {'_type': 'choice', '_value': [1]}}
    config.experiment_working_directory = str(tmp_path)
    experiment = GridExperiment(config)
    experiment.start(0)
    (row,) = launcher.summarize_trials(experiment)
    assert tuple(row) == RETRAIN_COLUMNS
    assert (row['source'], row['seed'], row['test_acc'], row['params'], row['flops'], row['arch']) == (
        'AbCdE', 1, 71.0, 1.5e5, 2.5e7, NB201_CELL)
    config.trial_command = 'python3 -m nni_labelfree.experiment.trial'
    assert tuple(launcher.summarize_trials(experiment)[0]) == SUMMARY_COLUMNS


# --- --resume / --view and the command line -----------------------------------------------------------------------
class FakeManifest:
    records: dict = {}
    experiment_file = '/home/someone/nni-experiments/.experiment'

    def get_all_experiments(self):
        return self.records


@pytest.fixture
def manifest(monkeypatch):
    """NNI's experiment list (``~/nni-experiments/.experiment``) replaced by ``FakeManifest.records``."""
    monkeypatch.setattr(nnictl_config_utils, 'Experiments', FakeManifest)
    monkeypatch.setattr(nnictl_utils, 'update_experiment', lambda: None)
    FakeManifest.records = {'older123': {'status': 'STOPPED', 'logDir': '/nowhere', 'port': 8080}}
    return FakeManifest.records


def test_an_unknown_id_is_refused_naming_the_known_ones(manifest):
    with pytest.raises(ValueError, match=r"Unknown experiment id 'nosuch12'.*most recent: older123.*nnictl "
                                         r"experiment list --all"):
        launcher.known_experiment('nosuch12')


def test_a_running_experiment_cannot_be_resumed_or_viewed(manifest):
    manifest['running1'] = {'status': 'RUNNING', 'port': 8123, 'logDir': '/x'}
    with pytest.raises(ValueError, match=r'still running \(web UI http://localhost:8123\).*nnictl stop running1'):
        launcher.resume_experiment('running1')
    with pytest.raises(ValueError, match='still running'):
        launcher.view_experiment('running1')


def test_a_listed_experiment_whose_folder_is_gone_is_reported(manifest, tmp_path):
    manifest['gone1234'] = {'status': 'STOPPED', 'logDir': str(tmp_path), 'port': 8080}
    with pytest.raises(FileNotFoundError, match=r'gone1234.*is gone.*nnictl experiment delete gone1234'):
        launcher.known_experiment('gone1234')
    (tmp_path / 'gone1234' / 'db').mkdir(parents=True)
    assert launcher.known_experiment('gone1234')['logDir'] == str(tmp_path)


@pytest.mark.parametrize('argv, message', [
    (['experiment'], 'exactly one of: a config YAML, --resume <id>, --view <id> (got none)'),
    (['experiment', 'x.yml', '--resume', 'abc'], '(got config, resume)'),
    (['experiment', '--view', 'abc', '--then-retrain', 'cpu'], 'does not apply to --view'),
    (['experiment', '--resume', 'nosuch12'], "Unknown experiment id 'nosuch12'"),
    (['experiment', '--view', 'nosuch12'], "Unknown experiment id 'nosuch12'"),
])
def test_command_line_bad_input_exits_2_with_one_message(argv, message, manifest, grid_experiments, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('nni-labelfree: error:') and message in err and err.count('\n') == 1, err
    assert grid_experiments == []


def test_command_line_passes_the_chain_options(monkeypatch):
    calls = []
    monkeypatch.setattr(launcher, 'run_experiment', lambda config, **kw: calls.append((config, kw)) or [
        {'status': 'SUCCEEDED'}])
    argv = ['experiment', 's.yml', '--then-retrain', 'cpu', '--retrain-seeds', '0,2', '--retrain-set', 'epochs=1',
            '--port', '9000']
    assert cli.main(argv) == 0
    assert calls == [('s.yml', dict(port=9000, keep_ui=False, timeout=None, then_retrain='cpu', retrain_seeds=[0, 2],
                                    retrain_set=['epochs=1']))]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(['experiment', 's.yml', '--retrain-seeds', '0,x'])


def test_port_plus_one_is_checked_for_remote(tmp_path, grid_experiments):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        sock.listen()
        taken = sock.getsockname()[1]
        launcher._check_port_free(taken - 1)  # local: only the web UI port
        with pytest.raises(ValueError, match=rf'Port {taken} is in use \(the remote training service also needs'):
            launcher._check_port_free(taken - 1, 'remote')


# --- NNI's real manager --------------------------------------------------------------------------------------------
def rest_get(port: int, endpoint: str):
    with urllib.request.urlopen(f'http://localhost:{port}/api/v1/nni/{endpoint}', timeout=30) as response:
        return json.load(response)


@pytest.fixture
def real_experiments(monkeypatch):
    """Every NNI experiment the launcher starts, with its REST trial list taken just before it stops."""
    started: list = []

    class RecordingExperiment(nni.experiment.Experiment):
        def start(self, *args, **kwargs):
            started.append(self)
            return super().start(*args, **kwargs)

        def stop(self):
            if self.port is not None:
                self.rest_trial_jobs = rest_get(self.port, 'trial-jobs')
            return super().stop()

    monkeypatch.setattr(nni.experiment, 'Experiment', RecordingExperiment)
    monkeypatch.setenv('PATH', f'{VENV_BIN}{os.pathsep}{os.environ.get("PATH", "")}')
    yield started
    for experiment in started:
        if experiment.port is not None:
            experiment.stop()
        atexit.unregister(experiment.stop)


@pytest.mark.slow
def test_a_search_trial_chained_with_a_retrain_trial_both_succeed(tmp_path, real_experiments, shared_data):
    archive = shared_data / 'images' / 'cifar10_jpeg.tar.gz'
    if not archive.is_file():
        pytest.skip(f'{archive} is absent')
    search = search_yaml(tmp_path, ['data=noise', 'channels=8', 'cells_per_stage=1', 'num_images=64',
                                    'batch_size=32', 'epochs=2', 'num_threads=1'])
    rows = launcher.run_experiment(search, port=free_port(), poll_seconds=1, timeout=600, then_retrain='cpu',
                                   retrain_set=['data=imagefolder', f'data_root={archive}', 'num_images=64',
                                                'test_images=64', 'epochs=1', 'batch_size=32', 'num_threads=1'])
    search_run, retrain_run = real_experiments
    assert [j['status'] for j in search_run.rest_trial_jobs] == ['SUCCEEDED']
    assert [j['status'] for j in retrain_run.rest_trial_jobs] == ['SUCCEEDED']
    assert [(r['stage'], r['status']) for r in rows] == [('search', 'SUCCEEDED'), ('retrain', 'SUCCEEDED')]
    assert rows[1]['source'] == search_run.rest_trial_jobs[0]['trialJobId']
    assert rows[1]['arch'] == rows[0]['arch']  # the retrained cell is the one the search exported
    assert rows[1]['table_acc'] == rows[0]['table_acc']  # the search's table accuracy of that cell
    assert 0.0 <= rows[1]['test_acc'] <= 100.0 and rows[1]['params'] > 0 and rows[1]['flops'] > 0


@pytest.mark.slow
def test_resume_finishes_a_stopped_experiment_and_view_shows_it(tmp_path, real_experiments):
    config_path = write_yaml(tmp_path / 'record.yml', {
        'experimentName': 'resume test', 'searchSpace': {'seed': {'_type': 'choice', '_value': [0, 1, 2]}},
        'trialCommand': 'python3 record_gpu_trial.py', 'trialCodeDirectory': str(FAKE_GPU_DIR),
        'experimentWorkingDirectory': str(tmp_path / 'experiments'), 'trialConcurrency': 1, 'maxTrialNumber': 3,
        'tuner': {'name': 'GridSearch'}, 'trainingService': {'platform': 'local', 'useActiveGpu': False}})
    port = free_port()
    config = launcher.load_experiment_config(config_path)
    first = launcher._start_with_retries(lambda: nni.experiment.Experiment(config), lambda e: e.start(port), port)
    while not any(job.status == 'SUCCEEDED' for job in first.list_trial_jobs()):
        time.sleep(0.5)
    first.stop()
    done_before = {j['trialJobId'] for j in first.rest_trial_jobs if j['status'] == 'SUCCEEDED'}
    rows = launcher.resume_experiment(first.id, port=port, poll_seconds=1, timeout=300)
    assert sorted(r['seed'] for r in rows) == [0, 1, 2] and {r['status'] for r in rows} == {'SUCCEEDED'}
    assert done_before <= {r['trial'] for r in rows}  # the trials run before the stop are kept, not rerun
    assert launcher.view_experiment(first.id, port=port, keep_ui=False) == rows
