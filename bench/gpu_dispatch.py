"""What NNI 3.0's local GPU scheduling adds per trial, measured with a faked GPU inventory (no GPU needed).

Experiments of ``--trials`` trivial trials (``tests/fake_gpu/record_gpu_trial.py``, which records its start and end
and exits), one trial at a time, started through ``nni-labelfree experiment``'s launcher:

- ``cpu``: no ``trialGpuNumber`` (NNI's GPU scheduler off);
- ``fake_gpu``: ``trialGpuNumber: 1`` on 1 fake GPU (``tests/fake_gpu/pynvml.py`` first on ``PYTHONPATH``), which
  the launcher rewrites to ``maxTrialNumberPerGpu: 2`` (a 0.5-GPU request, the one NNI 3.0 schedules there).

Per trial, the turnaround is the time from the previous trial's end to this trial's start (NNI notices the exit,
asks the tuner, schedules, spawns the process); reported as the median over trials, with the experiment's wall
time from start to the summary. The difference between the two is what scheduling on a GPU costs NNI per trial
(it runs its Python GPU collector on every scheduling). Rounds alternate the two kinds (``--rounds``).

    python -m bench.gpu_dispatch --trials 6 --rounds 2 --out bench/results/gpu_dispatch.json
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import emit_json

REPO = Path(__file__).resolve().parents[1]
FAKE_GPU_DIR = REPO / 'tests' / 'fake_gpu'


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _config(directory: Path, trials: int, gpu: bool) -> Path:
    config = {'experimentName': f'bench gpu_dispatch {"fake_gpu" if gpu else "cpu"}',
              'searchSpace': {'seed': {'_type': 'choice', '_value': list(range(trials))}},
              'trialCommand': 'python3 record_gpu_trial.py', 'trialCodeDirectory': str(FAKE_GPU_DIR),
              'experimentWorkingDirectory': str(directory / 'experiments'), 'trialConcurrency': 1,
              'maxTrialNumber': trials, 'tuner': {'name': 'GridSearch'},
              'trainingService': {'platform': 'local', 'useActiveGpu': gpu}}
    if gpu:
        config['trialGpuNumber'] = 1
    path = directory / 'experiment.yml'
    path.write_text(yaml.safe_dump(config))
    return path


def _records(directory: Path) -> list[dict]:
    paths = (directory / 'experiments').glob('*/environments/*/trials/*/gpu_trial.json')
    return sorted((json.loads(p.read_text()) for p in paths if p.parts[-6] != '_latest'), key=lambda r: r['start'])


def run_once(trials: int, gpu: bool) -> dict:
    """One experiment; its median turnaround per trial and wall time."""
    from nni_labelfree.experiment.launcher import run_experiment
    saved = {k: os.environ.get(k) for k in ('PYTHONPATH', 'NNI_LABELFREE_FAKE_GPUS')}
    if gpu:
        os.environ['PYTHONPATH'] = os.pathsep.join(p for p in (str(FAKE_GPU_DIR), saved['PYTHONPATH']) if p)
        os.environ['NNI_LABELFREE_FAKE_GPUS'] = '1'
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            rows = run_experiment(_config(Path(tmp), trials, gpu), port=_free_port(), poll_seconds=0.5, timeout=600)
            wall = time.perf_counter() - start
            records = _records(Path(tmp))
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    gaps = [b['start'] - a['end'] for a, b in zip(records, records[1:])]
    return {'succeeded': sum(r['status'] == 'SUCCEEDED' for r in rows), 'trials': trials, 'wall_seconds': wall,
            'median_turnaround_seconds': statistics.median(gaps),
            'devices': sorted({str(r['cuda_visible_devices']) for r in records})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--trials', type=int, default=6)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    runs: dict[str, list] = {'cpu': [], 'fake_gpu': []}
    for _ in range(args.rounds):
        for kind in runs:
            runs[kind].append(run_once(args.trials, gpu=kind == 'fake_gpu'))
    summary = {kind: {'median_turnaround_seconds': statistics.median(r['median_turnaround_seconds'] for r in rs),
                      'median_wall_seconds': statistics.median(r['wall_seconds'] for r in rs)}
               for kind, rs in runs.items()}
    added = summary['fake_gpu']['median_turnaround_seconds'] - summary['cpu']['median_turnaround_seconds']
    emit_json({'trials_per_experiment': args.trials, 'rounds': args.rounds, 'summary': summary,
               'gpu_scheduling_adds_seconds_per_trial': added, 'runs': runs,
               'machine_load_1min': os.getloadavg()[0]}, args.out)


if __name__ == '__main__':
    main()
