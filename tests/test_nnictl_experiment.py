"""Real NNI experiments on localhost through the launcher: trials, their metrics in the REST API, the summary.

Two short experiments run once per module (about 25 s each on 2 CPU cores): two RLNAS trials that must succeed,
and one trial with a bad configuration key that must fail with a clear message. Every experiment started here is
stopped in a ``finally`` even when an assertion or the launcher fails.
"""
from __future__ import annotations

import atexit
import contextlib
import csv
import json
import os
import socket
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

import nni.experiment
from nni.experiment import TrialJob, TrialMetricData

from nni_labelfree.benchmarks.nasbench201 import string_to_arch
from nni_labelfree.experiment import launcher

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TINY_FLAGS = ['data=noise', 'channels=8', 'cells_per_stage=1', 'num_images=64', 'batch_size=32', 'epochs=2',
              'num_threads=1']
EPOCHS = 2
UNKNOWN_KEY_MESSAGE = "Unknown configuration key 'epochz'. Did you mean 'epochs'?"


# --- helpers ---------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def write_config(directory: Path, set_flags: list[str], seeds: list[int], *, concurrency: int = 2,
                 working_directory: str | Path | None = None) -> Path:
    """A tiny copy of experiment_configs/quickstart.yml."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        'experimentName': f'nni-labelfree test {directory.name}',
        'searchSpace': {'seed': {'_type': 'choice', '_value': seeds}},
        'trialCommand': ' '.join(['python3 -m nni_labelfree.experiment.trial', *(f'--set {f}' for f in set_flags)]),
        'trialCodeDirectory': str(REPO),
        'experimentWorkingDirectory': str(working_directory or directory / 'experiments'),
        'trialConcurrency': concurrency,
        'maxTrialNumber': len(seeds),
        'maxExperimentDuration': '4m',
        'tuner': {'name': 'GridSearch'},
        'trainingService': {'platform': 'local', 'useActiveGpu': False},
    }
    path = directory / 'experiment.yml'
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def rest_get(port: int, endpoint: str):
    with urllib.request.urlopen(f'http://localhost:{port}/api/v1/nni/{endpoint}', timeout=30) as response:
        return json.load(response)


def decode_metric(data):
    """REST metric data is JSON encoded twice (NNI dumps the metric, then the manager dumps the string)."""
    while isinstance(data, str):
        data = json.loads(data)
    return data


@contextlib.contextmanager
def experiment_guard(monkeypatch):
    """Record every NNI Experiment the launcher starts and stop any still running on exit; the trials' ``python3``
    is this venv's (run_experiment also prepends it; monkeypatch restores PATH afterwards)."""
    started: list = []

    class RecordingExperiment(nni.experiment.Experiment):
        def start(self, *args, **kwargs):
            started.append(self)
            return super().start(*args, **kwargs)

    monkeypatch.setattr(nni.experiment, 'Experiment', RecordingExperiment)
    monkeypatch.setenv('PATH', f'{VENV_BIN}{os.pathsep}{os.environ.get("PATH", "")}')
    try:
        yield started
    finally:
        for experiment in started:
            try:
                if experiment.port is not None:
                    experiment.stop()
            finally:
                atexit.unregister(experiment.stop)


def run_with_rest_capture(config_path: Path, port: int, monkeypatch) -> dict:
    """``run_experiment`` with the REST API queried after the trials end and before the experiment stops."""
    captured: dict = {'port': port}
    original = launcher.summarize_trials

    def summarize_and_capture(experiment):
        captured['id'] = experiment.id
        captured['status'] = experiment.get_status()
        captured['trial_jobs'] = rest_get(experiment.port, 'trial-jobs')
        captured['metric_data'] = rest_get(experiment.port, 'metric-data')
        return original(experiment)

    monkeypatch.setattr(launcher, 'summarize_trials', summarize_and_capture)
    with experiment_guard(monkeypatch) as started:
        captured['rows'] = launcher.run_experiment(config_path, port=port, poll_seconds=1, timeout=180)
        captured['stopped'] = [experiment.port is None for experiment in started]
    return captured


# --- two trials that succeed -----------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def good_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp('good')
    config_path = write_config(directory, TINY_FLAGS, seeds=[0, 1])
    with pytest.MonkeyPatch.context() as monkeypatch:
        run = run_with_rest_capture(config_path, free_port(), monkeypatch)
    run['workdir'] = directory / 'experiments'
    return run


def _metrics_by_trial(run: dict, kind: str) -> dict[str, list[dict]]:
    out: dict[str, list] = {}
    for metric in sorted(run['metric_data'], key=lambda m: (m['trialJobId'], m['sequence'])):
        if metric['type'] == kind:
            out.setdefault(metric['trialJobId'], []).append(decode_metric(metric['data']))
    return out


def test_both_trials_succeed(good_run):
    assert good_run['status'] == 'DONE'
    jobs = good_run['trial_jobs']
    assert len(jobs) == 2
    assert [j['status'] for j in jobs] == ['SUCCEEDED', 'SUCCEEDED'], jobs
    assert sorted(r['status'] for r in good_run['rows']) == ['SUCCEEDED', 'SUCCEEDED']
    assert good_run['stopped'] == [True], 'run_experiment must stop its experiment'


def test_each_trial_reports_one_periodical_metric_per_epoch(good_run):
    periodical = _metrics_by_trial(good_run, 'PERIODICAL')
    assert sorted(periodical) == sorted(j['trialJobId'] for j in good_run['trial_jobs'])
    for trial_id, metrics in periodical.items():
        assert [m['epoch'] for m in metrics] == list(range(1, EPOCHS + 1)), (trial_id, metrics)
        for metric in metrics:
            for key in ('default', 'train_loss', 'kendall_tau'):
                assert isinstance(metric[key], float), (trial_id, key, metric)
            assert metric['default'] == metric['kendall_tau']


def test_each_trial_reports_a_final_metric_with_the_architecture(good_run):
    final = _metrics_by_trial(good_run, 'FINAL')
    assert len(final) == 2
    for trial_id, metrics in final.items():
        assert len(metrics) == 1, (trial_id, metrics)
        result = metrics[0]
        assert isinstance(result['default'], float) and result['default'] == result['test_acc']
        arch = string_to_arch(result['arch'])  # a valid NAS-Bench-201 string
        assert len(arch) == 6
        assert 'top' not in result  # the ranking stays in arch.json, not in the web UI's metric
    assert sorted(m[0]['seed'] for m in final.values()) == [0, 1]


def test_summary_rows_and_files(good_run):
    rows = good_run['rows']
    final = {t: m[0] for t, m in _metrics_by_trial(good_run, 'FINAL').items()}
    assert [r['trial'] for r in rows] == sorted(final)
    for row in rows:
        assert row['arch'] == final[row['trial']]['arch']
        assert row['test_acc'] == final[row['trial']]['test_acc']
        assert row['kendall_tau'] == final[row['trial']]['kendall_tau']
    assert sorted(r['seed'] for r in rows) == [0, 1]
    summary_dir = good_run['workdir'] / good_run['id']
    assert json.loads((summary_dir / 'summary.json').read_text()) == rows
    with open(summary_dir / 'summary.csv', newline='') as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == launcher.SUMMARY_COLUMNS
        table = list(reader)
    assert [(r['trial'], r['status'], r['arch']) for r in table] == [(r['trial'], r['status'], r['arch']) for r in rows]


def test_trial_artifacts_match_what_the_trial_reported(good_run):
    final = {t: m[0] for t, m in _metrics_by_trial(good_run, 'FINAL').items()}
    for job in good_run['trial_jobs']:
        trial_dir = Path(job['logPath'])
        assert trial_dir.is_relative_to(good_run['workdir']), trial_dir
        result = final[job['trialJobId']]
        config = json.loads((trial_dir / 'config.json').read_text())
        assert config['seed'] == result['seed'] and config['epochs'] == EPOCHS and config['channels'] == 8
        assert json.loads((trial_dir / 'arch.json').read_text())['nb201_string'] == result['arch']
        assert len(json.loads((trial_dir / 'metrics.json').read_text())) == EPOCHS
        assert (trial_dir / 'checkpoints' / 'supernet_final.pt').is_file()


# --- a trial with a bad configuration key ----------------------------------------------------------------------------
@pytest.fixture(scope='module')
def bad_key_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp('badkey')
    config_path = write_config(directory, TINY_FLAGS + ['epochz=1'], seeds=[0], concurrency=1)
    with pytest.MonkeyPatch.context() as monkeypatch:
        run = run_with_rest_capture(config_path, free_port(), monkeypatch)
    run['workdir'] = directory / 'experiments'
    # (the '_latest' symlink NNI adds next to the experiment folder would match '*' too)
    logs = sorted(run['workdir'].glob(f'{run["id"]}/environments/local-env/trials/*/trial.log'))
    run['trial_dir'] = logs[0].parent if len(logs) == 1 else None
    return run


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return lines[-1] if lines else ''


def test_bad_key_trial_fails_with_a_clear_message(bad_key_run):
    assert [r['status'] for r in bad_key_run['rows']] == ['FAILED']
    assert [j['status'] for j in bad_key_run['trial_jobs']] == ['FAILED']
    assert not bad_key_run['metric_data']
    assert bad_key_run['trial_dir'] is not None, 'expected exactly one trial.log'
    last = _last_line(bad_key_run['trial_dir'] / 'trial.stderr')
    assert last.startswith('nni-labelfree trial failed:') and UNKNOWN_KEY_MESSAGE in last, last
    assert not (bad_key_run['trial_dir'] / 'arch.json').exists()


def test_bad_key_trial_log_ends_with_the_reason(bad_key_run):
    assert bad_key_run['trial_dir'] is not None
    assert UNKNOWN_KEY_MESSAGE in _last_line(bad_key_run['trial_dir'] / 'trial.log')


# --- ports -----------------------------------------------------------------------------------------------------------
def test_a_port_with_a_listening_server_is_refused(tmp_path, monkeypatch):
    config_path = write_config(tmp_path, TINY_FLAGS, seeds=[0])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, experiment_guard(monkeypatch) as started:
        sock.bind(('127.0.0.1', 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ValueError, match=rf'Port {port} is in use.*--port'):
            launcher.run_experiment(config_path, port=port)
        assert started == []
    assert not (tmp_path / 'experiments').exists()


def test_a_bound_port_is_refused(tmp_path, monkeypatch):
    config_path = write_config(tmp_path, TINY_FLAGS, seeds=[0])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, experiment_guard(monkeypatch):
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
        with pytest.raises(ValueError, match=rf'Port {port} is in use'):
            launcher.run_experiment(config_path, port=port)


# --- the summary, with a fake experiment (no manager) ------------------------------------------------------------
class FakeExperiment:
    """The part of nni.experiment.Experiment the launcher uses, answering from REST-shaped records."""

    def __init__(self, config=None, jobs=(), metrics=()):
        self.config, self.id, self.port = config, 'fakeexp1', None
        self._jobs, self._metrics = list(jobs), list(metrics)
        self.stopped = False

    def start(self, port):
        self.port = port

    def stop(self):
        self.stopped, self.port = True, None

    def get_status(self):
        return 'DONE'

    def list_trial_jobs(self):
        return [TrialJob(**job) for job in self._jobs]

    def get_job_metrics(self):
        out: dict = {}
        for metric in self._metrics:
            out.setdefault(metric['trialJobId'], []).append(TrialMetricData(**metric))
        return out


def _job(trial_id: str, status: str, parameters: dict, parameter_id: int) -> dict:
    record = {'parameter_id': parameter_id, 'parameter_source': 'algorithm', 'parameters': parameters,
              'parameter_index': 0}
    return {'trialJobId': trial_id, 'status': status, 'startTime': 0, 'sequenceId': parameter_id,
            'hyperParameters': [json.dumps(record)]}


def _metric(trial_id: str, kind: str, value: dict, parameter_id: int, sequence: int = 0) -> dict:
    return {'timestamp': 0, 'trialJobId': trial_id, 'parameterId': str(parameter_id), 'type': kind,
            'sequence': sequence, 'data': json.dumps(json.dumps(value))}


FINAL_0 = {'arch': '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|',
           'seed': 0, 'data': 'noise', 'test_acc': 93.5, 'kendall_tau': 0.25, 'train_loss': 2.1, 'wall_time': 9.0,
           'default': 93.5}


def test_summarize_trials_rows():
    experiment = FakeExperiment(
        jobs=[_job('bbbbb', 'FAILED', {'seed': 1, 'data': 'noise'}, 1),
              _job('aaaaa', 'SUCCEEDED', {'seed': 0, 'data': 'noise'}, 0)],
        metrics=[_metric('aaaaa', 'PERIODICAL', {'default': 0.1, 'epoch': 1}, 0),
                 _metric('aaaaa', 'FINAL', FINAL_0, 0)])
    rows = launcher.summarize_trials(experiment)
    assert [r['trial'] for r in rows] == ['aaaaa', 'bbbbb']
    assert tuple(rows[0]) == launcher.SUMMARY_COLUMNS
    assert rows[0] == {'trial': 'aaaaa', 'status': 'SUCCEEDED', 'data': 'noise', 'seed': 0, 'arch': FINAL_0['arch'],
                       'test_acc': 93.5, 'kendall_tau': 0.25, 'train_loss': 2.1, 'wall_time': 9.0}
    assert rows[1]['status'] == 'FAILED' and rows[1]['arch'] == '' and rows[1]['seed'] == 1


def test_summary_takes_data_and_seed_from_what_the_trial_ran():
    experiment = FakeExperiment(jobs=[_job('aaaaa', 'SUCCEEDED', {'seed': 1}, 1)],
                                metrics=[_metric('aaaaa', 'FINAL', FINAL_0, 0)])
    row = launcher.summarize_trials(experiment)[0]
    assert (row['data'], row['seed']) == ('noise', 0)


def test_run_experiment_writes_the_summary_and_stops(tmp_path, monkeypatch):
    fakes: list[FakeExperiment] = []

    def make(config):
        fakes.append(FakeExperiment(config, jobs=[_job('aaaaa', 'SUCCEEDED', {'seed': 0}, 0)],
                                    metrics=[_metric('aaaaa', 'FINAL', FINAL_0, 0)]))
        return fakes[-1]

    monkeypatch.setattr(nni.experiment, 'Experiment', make)
    monkeypatch.setenv('PATH', os.environ.get('PATH', ''))
    rows = launcher.run_experiment(write_config(tmp_path, TINY_FLAGS, seeds=[0]), port=free_port(), poll_seconds=0)
    assert [r['arch'] for r in rows] == [FINAL_0['arch']]
    assert fakes[0].stopped
    assert json.loads((tmp_path / 'experiments' / 'fakeexp1' / 'summary.json').read_text()) == rows
    assert os.environ['PATH'].split(os.pathsep)[0] == str(VENV_BIN)


def test_relative_working_directory_summary_lands_next_to_the_experiment(tmp_path, monkeypatch):
    monkeypatch.setattr(nni.experiment, 'Experiment', FakeExperiment)
    monkeypatch.setenv('PATH', os.environ.get('PATH', ''))
    config_path = write_config(tmp_path / 'cfg', TINY_FLAGS, seeds=[0], working_directory='exps')
    (tmp_path / 'elsewhere').mkdir()
    monkeypatch.chdir(tmp_path / 'elsewhere')
    launcher.run_experiment(config_path, port=free_port(), poll_seconds=0)
    canonical = launcher.load_experiment_config(config_path).canonical_copy().experiment_working_directory
    assert Path(canonical) == tmp_path / 'cfg' / 'exps'
    assert (tmp_path / 'cfg' / 'exps' / 'fakeexp1' / 'summary.csv').is_file()


def _imagefolder_config(directory: Path, data_root: str) -> Path:
    path = write_config(directory, TINY_FLAGS[1:] + [f'data_root={data_root}'], seeds=[0])
    config = yaml.safe_load(path.read_text())
    config['searchSpace']['data'] = {'_type': 'choice', '_value': ['imagefolder', 'noise']}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.parametrize('root_exists', [False, True])
def test_imagefolder_trials_are_dropped_only_when_their_images_are_absent(tmp_path, monkeypatch, capsys, root_exists):
    fakes: list[FakeExperiment] = []

    def make(config):
        fakes.append(FakeExperiment(config))
        return fakes[-1]

    monkeypatch.setattr(nni.experiment, 'Experiment', make)
    monkeypatch.setenv('PATH', os.environ.get('PATH', ''))
    root = tmp_path / 'images'
    if root_exists:
        root.mkdir()
    # trialCodeDirectory is the repository root, so the path in the trial command is relative to it
    launcher.run_experiment(_imagefolder_config(tmp_path, os.path.relpath(root, REPO)), port=free_port(),
                            poll_seconds=0)
    data = fakes[0].config.search_space['data']['_value']
    out = capsys.readouterr().out
    if root_exists:
        assert data == ['imagefolder', 'noise'] and 'NOTE' not in out
    else:
        assert data == ['noise']
        assert f'NOTE: {root} is absent' in out and "data=['noise']" in out
