"""GPU dispatch (nni_labelfree.experiment.gpu) against NNI 3.0's real scheduler, with a faked GPU inventory.

Three levels, fastest first:
1. the plan itself (which keys change, which configs are refused, with what message);
2. every plan fed to NNI's own ``scheduler.js`` (run by NNI's bundled Node with a mocked inventory, about 0.3 s a
   call): each trial is scheduled, concurrent trials never share a GPU, and the configurations we refuse are the
   ones NNI never schedules (returns null or throws);
3. NNI's real manager and trial keeper with the fake NVML ``tests/fake_gpu/pynvml.py`` first on ``PYTHONPATH``:
   1 fake GPU with ``trialGpuNumber: 1`` schedules every trial (after the launcher's rewrite); 4 fake GPUs run
   4 trials at once, each with its own ``CUDA_VISIBLE_DEVICES``.
The unrewritten 1-GPU config is deliberately NOT run through the manager: NNI retries the refused trial every
second and each retry starts its Python GPU collector (whose cache never hits), which piled up to hundreds of
processes on this shared machine; level 2 shows the refusal with NNI's scheduler instead.
Real GPUs are not involved anywhere (none on this machine).
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import nni.experiment
import nni_node
from nni.experiment.config import ExperimentConfig

from nni_labelfree.experiment import gpu, launcher
from nni_labelfree.experiment.gpu import GpuInventory, apply_gpu_dispatch, detect_gpus, plan_gpu_dispatch

FAKE_GPU_DIR = Path(__file__).resolve().parent / 'fake_gpu'
NODE_DIR = Path(nni_node.__path__[0])
VENV_BIN = Path(sys.executable).parent


def make_config(gpus: int | None = 1, per_gpu: int | None = None, concurrency: int = 1, use_active: bool | None = True,
                indices=None, platform: str = 'local', **top) -> ExperimentConfig:
    service = {'platform': platform}
    if use_active is not None:
        service['useActiveGpu'] = use_active
    if per_gpu is not None:
        service['maxTrialNumberPerGpu'] = per_gpu
    if indices is not None:
        service['gpuIndices'] = indices
    raw = {'searchSpace': {'seed': {'_type': 'choice', '_value': [0]}}, 'trialCommand': 'python3 x.py',
           'trialCodeDirectory': '.', 'trialConcurrency': concurrency, 'tuner': {'name': 'GridSearch'},
           'trainingService': service, **top}
    if gpus is not None:
        raw['trialGpuNumber'] = gpus
    return ExperimentConfig(**raw)


# --- 1. the plan -----------------------------------------------------------------------------------------------------
def test_one_gpu_machine_gets_a_fractional_request_and_one_trial_at_a_time():
    plan = plan_gpu_dispatch(make_config(gpus=1, concurrency=3), GpuInventory(1))
    assert (plan.max_trial_number_per_gpu, plan.trial_concurrency) == (2, 1)
    assert any('maxTrialNumberPerGpu 1 -> 2' in n and '0.5 GPU' in n for n in plan.notes), plan.notes
    assert any('trialConcurrency 3 -> 1' in n for n in plan.notes), plan.notes


def test_four_gpu_machine_runs_four_whole_gpu_trials():
    config = make_config(gpus=1, per_gpu=2, concurrency=1)
    notes = apply_gpu_dispatch(config, GpuInventory(4))
    assert (config.training_service.max_trial_number_per_gpu, config.trial_concurrency) == (1, 4)
    assert len(notes) == 2


def test_gpu_indices_and_multi_gpu_trials_set_the_concurrency():
    assert plan_gpu_dispatch(make_config(gpus=1, indices=[1, 3]), GpuInventory(4)).trial_concurrency == 2
    assert plan_gpu_dispatch(make_config(gpus=1, indices='2'), GpuInventory(4)).trial_concurrency == 1
    plan = plan_gpu_dispatch(make_config(gpus=2, concurrency=2), GpuInventory(4))
    assert (plan.max_trial_number_per_gpu, plan.trial_concurrency, plan.notes) == (1, 2, [])


def test_cpu_and_non_local_configs_are_left_alone():
    assert plan_gpu_dispatch(make_config(gpus=None, use_active=False), GpuInventory(0)) is None
    assert plan_gpu_dispatch(make_config(gpus=0, use_active=False), GpuInventory(0)) is None
    config = make_config(gpus=None, use_active=False, concurrency=5)
    assert apply_gpu_dispatch(config, GpuInventory(0)) == [] and config.trial_concurrency == 5


@pytest.mark.parametrize('config, inventory, message', [
    (make_config(gpus=1), GpuInventory(0, error='init: NVML Shared Library Not Found'),
     r'NNI finds no GPU \(init: NVML Shared Library Not Found\).*trialGpuNumber: 0'),
    (make_config(gpus=1, indices=[0, 5]), GpuInventory(4), r'gpuIndices \[0, 5\] names GPU \[5\].*0\.\.3'),
    (make_config(gpus=1, use_active=False), GpuInventory(2),
     r'useActiveGpu not true.*waits forever.*useActiveGpu: true'),
    (make_config(gpus=2), GpuInventory(2), r'never schedules.*trialGpuNumber <= 1.*remove trialGpuNumber'),
    (make_config(gpus=4), GpuInventory(4), r'never schedules.*trialGpuNumber <= 3'),
    (make_config(gpus=5), GpuInventory(4), r'only 4 GPU\(s\) are usable'),
    (make_config(gpus=3, indices=[0, 1]), GpuInventory(4), r'only 2 GPU\(s\) are usable.*gpuIndices'),
    (make_config(gpus=2, per_gpu=2), GpuInventory(4), r'round\(2/2\) GPUs, not 2.*maxTrialNumberPerGpu: 1'),
], ids=['no-gpu', 'missing-index', 'active-gpu-policy', 'all-gpus', 'all-four', 'too-many', 'too-few-indices',
        'rounded-multi-gpu'])
def test_configurations_that_would_hang_are_refused_with_the_fix(config, inventory, message):
    with pytest.raises(ValueError, match=message):
        plan_gpu_dispatch(config, inventory)


# --- 2. NNI's own scheduler.js ---------------------------------------------------------------------------------------
def nni_scheduler(gpus: int, request: float, concurrency: int, trials: int, indices=None, reject_active=False,
                  processes=()) -> list[dict]:
    """Schedule ``trials`` trials, ``concurrency`` at a time, with NNI 3.0's TaskScheduler and a mocked inventory."""
    spec = {'gpus': gpus, 'request': request, 'concurrency': concurrency, 'trials': trials,
            'restrictions': {'onlyUseIndices': indices, 'rejectActive': reject_active}, 'processes': list(processes)}
    env = {**os.environ, 'NNI_NODE_DIR': str(NODE_DIR), 'NODE_PATH': str(NODE_DIR / 'node_modules')}
    done = subprocess.run([str(NODE_DIR / 'node'), str(FAKE_GPU_DIR / 'scheduler_probe.js'), json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=60, check=True)
    return json.loads(done.stdout)


def request_of(config) -> float:
    """What NNI's local training service asks its scheduler for (local_v3/local.js createTrial)."""
    return config.trial_gpu_number / config.training_service.max_trial_number_per_gpu


@pytest.mark.parametrize('gpus, trial_gpus, indices', [(1, 1, None), (2, 1, None), (4, 1, None), (4, 1, [1, 3]),
                                                       (4, 2, None), (8, 3, None), (4, 1, [2])])
def test_every_planned_trial_is_scheduled_by_nni_on_its_own_gpus(gpus, trial_gpus, indices):
    config = make_config(gpus=trial_gpus, indices=indices, concurrency=7)
    apply_gpu_dispatch(config, GpuInventory(gpus))
    placed = nni_scheduler(gpus, request_of(config), config.trial_concurrency, 3 * config.trial_concurrency + 1,
                           indices=indices)
    assert len(placed) == 3 * config.trial_concurrency + 1 and all(p['devices'] for p in placed), placed
    devices = {p['trial']: set(p['devices'].split(',')) for p in placed}
    for p in placed:
        assert len(devices[p['trial']]) == trial_gpus
        assert indices is None or devices[p['trial']] <= {str(i) for i in indices}
        for other in p['beside']:
            assert not devices[p['trial']] & devices[other], (p, devices[other])  # never two trials on one GPU
    assert max(len(p['beside']) + 1 for p in placed) == config.trial_concurrency


@pytest.mark.parametrize('gpus, gpu_request, kwargs', [
    (1, 1, {}),                                  # trialGpuNumber 1, maxTrialNumberPerGpu 1 on a 1-GPU machine
    (2, 2, {}),                                  # every GPU for one trial
    (1, 0.5, {'reject_active': True, 'processes': [{'gpuIndex': 0, 'type': 'graphics', 'pid': 7}]}),
], ids=['one-of-one', 'two-of-two', 'active-gpu-rejected'])
def test_what_we_refuse_is_what_nni_never_schedules(gpus, gpu_request, kwargs):
    placed = nni_scheduler(gpus, gpu_request, concurrency=1, trials=2, **kwargs)
    assert len(placed) == 1 and (placed[0]['devices'] is None or placed[0]['devices'].startswith('error')), placed


SHIPPED_GPU_CONFIGS = [p for p in sorted((FAKE_GPU_DIR.parents[1] / 'experiment_configs').rglob('*.yml'))
                       if not p.name.endswith('_example.yml')
                       and (yaml.safe_load(p.read_text()) or {}).get('trialGpuNumber')]


def test_there_are_shipped_gpu_configs():
    assert {'rlnas_nasbench201.yml', 'unnas_darts.yml'} <= {p.name for p in SHIPPED_GPU_CONFIGS}


@pytest.mark.parametrize('gpus', [1, 4])
@pytest.mark.parametrize('path', SHIPPED_GPU_CONFIGS, ids=lambda p: p.name)
def test_shipped_gpu_configs_run_one_trial_per_gpu(path, gpus):
    config = launcher.load_experiment_config(path)
    apply_gpu_dispatch(config, GpuInventory(gpus))
    assert config.trial_concurrency == gpus
    placed = nni_scheduler(gpus, request_of(config), config.trial_concurrency, gpus + 1)
    assert len(placed) == gpus + 1 and all(p['devices'] for p in placed), placed


# --- 3. NNI's manager with a fake NVML ------------------------------------------------------------------------------
@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus(n)``: NNI (and its GPU collector, run by the manager) sees ``n`` GPUs from now on."""
    def set_count(count: int, processes: str = '') -> None:
        monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(FAKE_GPU_DIR)] + [p for p in [
            os.environ.get('PYTHONPATH', '')] if p]))
        monkeypatch.setenv('NNI_LABELFREE_FAKE_GPUS', str(count))
        monkeypatch.setenv('NNI_LABELFREE_FAKE_GPU_PROCESSES', processes)
    monkeypatch.setenv('PATH', f'{VENV_BIN}{os.pathsep}{os.environ.get("PATH", "")}')
    return set_count


def test_detect_gpus_runs_nnis_collector(fake_gpus):
    fake_gpus(4, processes='2:graphics')
    assert detect_gpus() == GpuInventory(4, active=(2,))
    fake_gpus(0)
    inventory = detect_gpus()
    assert inventory.count == 0 and 'NVML Shared Library Not Found' in inventory.error


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def write_gpu_config(directory: Path, trials: int, hold: float, **top) -> Path:
    """An experiment of the trivial recording trial (tests/fake_gpu/record_gpu_trial.py), one GPU per trial."""
    config = {
        'experimentName': f'gpu dispatch {directory.name}',
        'searchSpace': {'seed': {'_type': 'choice', '_value': list(range(trials))}},
        'trialCommand': f'python3 record_gpu_trial.py --hold {hold}',
        'trialCodeDirectory': str(FAKE_GPU_DIR),
        'experimentWorkingDirectory': str(directory / 'experiments'),
        'trialConcurrency': trials, 'maxTrialNumber': trials, 'maxExperimentDuration': '5m',
        'trialGpuNumber': 1, 'tuner': {'name': 'GridSearch'},
        'trainingService': {'platform': 'local', 'useActiveGpu': True}, **top}
    path = directory / 'experiment.yml'
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def trial_records(directory: Path) -> list[dict]:
    """What each trial recorded (NNI's ``_latest`` link to the experiment folder would list every trial twice)."""
    paths = sorted((directory / 'experiments').glob('*/environments/*/trials/*/gpu_trial.json'))
    return [json.loads(p.read_text()) for p in paths if p.parts[-6] != '_latest']


def stop_and_reap(experiment) -> None:
    """Stop an experiment this test started; if its manager outlives ``stop()``, kill its process group."""
    proc = getattr(experiment, '_proc', None)
    try:
        if experiment.port is not None:
            experiment.stop()
    finally:
        atexit.unregister(experiment.stop)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # NNI starts its manager in a process group of its own


def run_launcher(config_path: Path, monkeypatch, gpus: int) -> tuple[list[dict], dict]:
    """``launcher.run_experiment`` with every started NNI experiment stopped on the way out, even on failure;
    returns the summary rows and the FINAL metric each trial reported (read from the manager before it stopped).

    A config NNI's scheduler would not place on ``gpus`` GPUs fails the test before any manager starts: a hanging
    manager retries (and starts its GPU collector) every second, which must not happen on a shared machine.
    """
    started: list = []
    finals: dict = {}

    class RecordingExperiment(nni.experiment.Experiment):
        def start(self, *args, **kwargs):
            config = self.config
            if config.trial_gpu_number:
                placed = nni_scheduler(gpus, request_of(config), config.trial_concurrency, config.trial_concurrency)
                assert all(p['devices'] for p in placed), f'NNI would never schedule this config: {placed}'
            started.append(self)
            return super().start(*args, **kwargs)

        def stop(self):
            if self.port is not None:
                finals.update({trial: [m.data for m in metrics if m.type == 'FINAL']
                               for trial, metrics in self.get_job_metrics().items()})
            return super().stop()

    monkeypatch.setattr(nni.experiment, 'Experiment', RecordingExperiment)
    try:
        return launcher.run_experiment(config_path, port=free_port(), poll_seconds=1, timeout=240), finals
    finally:
        for experiment in started:
            stop_and_reap(experiment)


def test_one_fake_gpu_schedules_every_trial_with_trial_gpu_number_1(tmp_path, fake_gpus, monkeypatch, capsys):
    fake_gpus(1)
    rows, finals = run_launcher(write_gpu_config(tmp_path, trials=2, hold=0.5), monkeypatch, gpus=1)
    assert [r['status'] for r in rows] == ['SUCCEEDED', 'SUCCEEDED'], rows
    assert sorted(finals) == [r['trial'] for r in rows]
    assert all(f == [{'default': 1.0, 'cuda_visible_devices': '0'}] for f in finals.values()), finals
    records = sorted(trial_records(tmp_path), key=lambda r: r['start'])
    assert [r['cuda_visible_devices'] for r in records] == ['0', '0']
    assert records[0]['end'] <= records[1]['start'], 'one GPU: the two trials must not overlap'
    assert sorted(r['parameters']['seed'] for r in records) == [0, 1]
    out = capsys.readouterr().out
    assert 'maxTrialNumberPerGpu 1 -> 2' in out and 'trialConcurrency 2 -> 1' in out


def test_a_gpu_config_nni_would_never_schedule_is_refused_before_starting(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, 'detect_gpus', lambda: GpuInventory(2))
    config_path = write_gpu_config(tmp_path, trials=1, hold=0, trialGpuNumber=2)
    with pytest.raises(ValueError, match='never schedules'):
        run_launcher(config_path, monkeypatch, gpus=2)
    assert not (tmp_path / 'experiments').exists()


@pytest.mark.slow
def test_four_fake_gpus_run_four_trials_at_once_each_on_its_own_gpu(tmp_path, fake_gpus, monkeypatch):
    fake_gpus(4)
    rows, finals = run_launcher(write_gpu_config(tmp_path, trials=4, hold=8, trialConcurrency=1),
                                monkeypatch, gpus=4)
    assert [r['status'] for r in rows] == ['SUCCEEDED'] * 4, rows
    assert sorted(f[0]['cuda_visible_devices'] for f in finals.values()) == ['0', '1', '2', '3']
    records = trial_records(tmp_path)
    assert sorted(r['cuda_visible_devices'] for r in records) == ['0', '1', '2', '3']
    assert max(r['start'] for r in records) < min(r['end'] for r in records), 'all four must run at the same time'
