"""Searches that survive: SIGKILL then rerun gives the uninterrupted result; torn checkpoints; same seed, same arch.

The reference is one uninterrupted ``nni-labelfree search`` (in-process, one thread); interrupted runs are real
``nni-labelfree`` subprocesses killed with SIGKILL once their k-th end-of-epoch checkpoint appears.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nni_labelfree.experiment import cli
from nni_labelfree.experiment.checkpoint import (CheckpointError, atomic_save, checkpoint_metadata, checkpoint_path,
                                                 list_checkpoints, load_checkpoint, newest_valid_checkpoint)
from nni_labelfree.data import EpochShuffleSampler
from nni_labelfree.strategies.common import rng_state_from_plain, rng_state_to_plain

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / 'nni-labelfree'
EPOCHS, KILL_AFTER = 8, 2
FLAGS = {'data': 'noise', 'channels': 4, 'cells_per_stage': 1, 'num_images': 128, 'batch_size': 32,
         'epochs': EPOCHS, 'num_threads': 1, 'seed': 3}


def _argv(output: Path, flags: dict = FLAGS, **overrides) -> list[str]:
    argv = ['search', '--output', str(output)]
    for key, value in {**flags, **overrides}.items():
        argv += [f'--{key.replace("_", "-")}', str(value)]
    return argv


def _search_in_process(output: Path, flags: dict = FLAGS, **overrides) -> int:
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return cli.main(_argv(output, flags, **overrides))
    finally:
        torch.set_num_threads(threads)  # the search sets one thread; the rest of the session keeps its own


def _assert_same_search(run: Path, reference: Path) -> None:
    """Same architecture, angles, per-epoch metrics, trained weights and theta_0, bit for bit."""
    got, want = (json.loads((d / 'arch.json').read_text()) for d in (run, reference))
    got.pop('wall_time'), want.pop('wall_time')
    assert got == want  # arch, angle, top-10 angles, test_acc, kendall_tau, train_loss, seed
    assert json.loads((run / 'metrics.json').read_text()) == json.loads((reference / 'metrics.json').read_text())
    final, ref = (torch.load(d / 'checkpoints' / 'supernet_final.pt', weights_only=True) for d in (run, reference))
    assert final.keys() == ref.keys() and final['final']  # UnNAS keeps no initial weights: None on both
    for part in (p for p in ('initial', 'final') if ref[p] is not None):
        assert final[part].keys() == ref[part].keys()
        assert all(torch.equal(final[part][k], ref[part][k]) for k in ref[part]), part


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> Path:
    """An uninterrupted search."""
    output = tmp_path_factory.mktemp('reference') / 'out'
    assert _search_in_process(output) == 0
    return output


# --- kill and resume ------------------------------------------------------------------------------------------------
def _start_and_kill_after(output: Path, epochs_done: int, log: Path, timeout: float = 240,
                          flags: dict = FLAGS) -> None:
    wanted = checkpoint_path(output / 'checkpoints', epochs_done)
    with open(log, 'wb') as sink:
        proc = subprocess.Popen([str(SCRIPT), *_argv(output, flags)], stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            deadline = time.monotonic() + timeout
            while not wanted.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert wanted.exists(), f'no {wanted.name} after {timeout}s:\n{log.read_text()[-3000:]}'
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (output / 'arch.json').exists(), 'the search finished before it could be killed'


def test_sigkilled_search_resumes_to_the_uninterrupted_result(tmp_path, reference):
    output = tmp_path / 'out'
    _start_and_kill_after(output, KILL_AFTER, tmp_path / 'killed.log')
    left = [epoch for epoch, _ in list_checkpoints(output / 'checkpoints')]
    assert KILL_AFTER in left and len(left) <= 2 and max(left) < EPOCHS, left  # keeps the last two
    done = subprocess.run([str(SCRIPT), *_argv(output)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(rf'Resuming the search from \S+search_epoch{max(left):04d}\.ckpt', done.stderr), done.stderr
    _assert_same_search(output, reference)
    assert not list((output / 'checkpoints').glob('.*.tmp'))  # a write cut by the kill is cleared
    history = json.loads((output / 'metrics.json').read_text())
    assert [m['epoch'] for m in history] == list(range(1, EPOCHS + 1))  # epochs before the kill are kept


# DARTS-family searches: alphas, both optimisers, the shuffle order, jigsaw's per-epoch tiles (UnNAS), generated
# images, random labels and the edges decided so far (UnrealNAS with SGAS) must come back.
DARTS_FAMILY = {
    'unnas-jigsaw': {'strategy': 'unnas', 'task': 'jigsaw', 'data': 'noise', 'channels': 4, 'cells_per_stage': 1,
                     'num_images': 192, 'batch_size': 16, 'epochs': 10, 'num_threads': 1, 'seed': 5},
    'unrealnas-rlgd-sgas': {'strategy': 'unrealnas', 'unreal_data': 'rlgd', 'algorithm': 'sgas', 'data': 'noise',
                            'channels': 4, 'cells_per_stage': 1, 'num_images': 192, 'batch_size': 16, 'epochs': 10,
                            'decision_warmup': 1, 'decision_freq': 1, 'num_threads': 1, 'seed': 6},
}


# UnrealNAS's kill/resume runs in `make test-all` (SGAS's decision state also round-trips in tests/test_sgas.py).
@pytest.mark.parametrize('flags', [pytest.param(f, id=k, marks=[pytest.mark.slow] if k.startswith('unrealnas') else [])
                                   for k, f in DARTS_FAMILY.items()])
def test_sigkilled_darts_family_search_resumes_to_the_uninterrupted_result(tmp_path, flags):
    reference = tmp_path / 'reference'
    assert _search_in_process(reference, flags) == 0
    output = tmp_path / 'out'
    _start_and_kill_after(output, KILL_AFTER, tmp_path / 'killed.log', flags=flags)
    done = subprocess.run([str(SCRIPT), *_argv(output, flags)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'Resuming the search from' in done.stderr, done.stderr[-3000:]
    _assert_same_search(output, reference)  # same architecture, per-epoch metrics and skip counts, same alphas
    checkpoint = torch.load(checkpoint_path(output / 'checkpoints', flags['epochs']), weights_only=True)
    assert any(k.endswith('_arch_alpha') for k in checkpoint['state_dict']) and len(checkpoint['optimizer_states']) == 2
    history = json.loads((output / 'metrics.json').read_text())
    if flags['strategy'] == 'unrealnas':  # decisions made before the kill are part of the resumed run's history
        assert [m['sgas_decided_edges'] + m['sgas_pruned_edges'] for m in history][:7] == [0, 1, 2, 3, 4, 5, 6]


def test_checkpoints_are_lightning_checkpoints_of_the_whole_search(reference):
    found = list_checkpoints(reference / 'checkpoints')
    assert [epoch for epoch, _ in found] == [EPOCHS - 1, EPOCHS]
    assert not list((reference / 'checkpoints').glob('.*.tmp'))
    checkpoint = torch.load(found[-1][1], map_location='cpu', weights_only=True)  # no safe globals needed
    assert checkpoint['epoch'] == EPOCHS - 1 and checkpoint['optimizer_states'] and checkpoint['lr_schedulers']
    assert checkpoint['loops']['fit_loop']['epoch_progress']['current']['processed'] == EPOCHS
    assert set(checkpoint['rlnas_initial_weights']) and isinstance(checkpoint['rlnas_sampler_state']['keys'],
                                                                   torch.Tensor)
    assert checkpoint['rlnas_data']['next_epoch'] == EPOCHS
    history = checkpoint['callbacks']['SearchMetricsCallback']['history']
    assert [m['epoch'] for m in history] == list(range(1, EPOCHS + 1))
    assert checkpoint_metadata(checkpoint)['config']['seed'] == FLAGS['seed']


# --- torn checkpoints -----------------------------------------------------------------------------------------------
def test_torn_newest_checkpoint_is_skipped_and_the_previous_one_resumed(tmp_path, reference, caplog):
    output = tmp_path / 'out'
    shutil.copytree(reference, output)
    newest = checkpoint_path(output / 'checkpoints', EPOCHS)
    data = newest.read_bytes()
    newest.write_bytes(data[:len(data) // 2])
    for name in ('arch.json', 'metrics.json', 'checkpoints/supernet_final.pt'):
        (output / name).unlink()
    with caplog.at_level(logging.INFO):
        assert _search_in_process(output) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any('unreadable checkpoint' in m and newest.name in m for m in warnings), warnings
    assert f'search_epoch{EPOCHS - 1:04d}.ckpt' in caplog.text and 'Resuming the search from' in caplog.text
    _assert_same_search(output, reference)
    load_checkpoint(newest)  # rewritten whole by the resumed run


def test_load_checkpoint_refuses_garbage_and_newest_valid_skips_it(tmp_path):
    good = checkpoint_path(tmp_path, 1)
    atomic_save({'state_dict': {'w': torch.ones(2)}, 'loops': {}}, good)
    checkpoint_path(tmp_path, 2).write_bytes(b'PK\x03\x04 torn')
    checkpoint_path(tmp_path, 3).write_bytes(b'')
    for epoch in (2, 3):
        with pytest.raises(CheckpointError, match='cannot be read'):
            load_checkpoint(checkpoint_path(tmp_path, epoch))
    path, checkpoint = newest_valid_checkpoint(tmp_path)
    assert path == good and torch.equal(checkpoint['state_dict']['w'], torch.ones(2))
    atomic_save({'weights': torch.ones(1)}, checkpoint_path(tmp_path, 4))
    with pytest.raises(CheckpointError, match='not a resumable'):
        load_checkpoint(checkpoint_path(tmp_path, 4))


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / 'x.ckpt'
    atomic_save({'v': torch.zeros(1)}, target)
    with pytest.raises(Exception):
        atomic_save({'v': lambda: None}, target)  # unpicklable: fails mid-write
    assert torch.equal(torch.load(target, weights_only=True)['v'], torch.zeros(1))
    assert [p.name for p in tmp_path.iterdir()] == ['x.ckpt']


# --- refusing to mix searches ---------------------------------------------------------------------------------------
def test_resuming_with_other_settings_is_refused_and_leaves_the_folder_alone(tmp_path, reference, capsys):
    output = tmp_path / 'out'
    shutil.copytree(reference, output)
    before = (output / 'config.json').read_text()
    assert cli.main(_argv(output, seed=4, num_threads=torch.get_num_threads())) == 2
    err = capsys.readouterr().err
    assert 'other settings (seed: 3 -> 4)' in err and '--resume false' in err
    assert (output / 'config.json').read_text() == before


def test_resume_false_starts_over_and_ends_the_same(tmp_path, reference, caplog):
    output = tmp_path / 'out'
    shutil.copytree(reference, output)
    with caplog.at_level(logging.INFO):
        assert _search_in_process(output, resume='false') == 0
    assert 'Resuming' not in caplog.text and 'deleted the previous search checkpoints' in caplog.text
    _assert_same_search(output, reference)  # a fresh run with the same seed: same seed, same search


def test_changed_random_labels_are_refused_on_resume(tmp_path, reference, capsys):
    output = tmp_path / 'out'
    shutil.copytree(reference, output)
    path = checkpoint_path(output / 'checkpoints', EPOCHS)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint['rlnas_data']['label_digest'] = '0' * 64
    atomic_save(checkpoint, path)
    assert _search_in_process(output) == 2
    assert 'random labels rebuilt for this run differ' in capsys.readouterr().err


# --- same seed, same architecture; seeds recorded ---------------------------------------------------------------------
def test_same_seed_same_architecture_and_the_seed_is_recorded(tmp_path, reference):
    output = tmp_path / 'out'
    assert _search_in_process(output) == 0
    _assert_same_search(output, reference)
    for run in (output, reference):
        assert json.loads((run / 'arch.json').read_text())['seed'] == FLAGS['seed']
        assert json.loads((run / 'config.json').read_text())['seed'] == FLAGS['seed']


def test_shuffle_order_is_a_pure_function_of_seed_and_epoch():
    def order(seed, epoch):
        sampler = EpochShuffleSampler(50, seed)
        sampler.set_epoch(epoch)
        return list(sampler)
    sampler = EpochShuffleSampler(50, seed=1)
    orders = []
    for epoch in (0, 1, 2, 1):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[1] == orders[3] == order(1, 1)  # going back to an epoch gives its order again
    assert len({tuple(o) for o in orders}) == 3 and sorted(orders[0]) == list(range(50))
    assert order(1, 0) != order(2, 0)


def test_path_sampler_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    rng = np.random.RandomState(5)
    rng.randint(0, 10, size=7), rng.standard_normal()  # leaves a cached gaussian in the state
    atomic_save({'state': rng_state_to_plain(rng)}, tmp_path / 's.pt')
    restored = np.random.RandomState(0)
    restored.set_state(rng_state_from_plain(torch.load(tmp_path / 's.pt', weights_only=True)['state']))
    assert np.array_equal(restored.randint(0, 1000, size=20), rng.randint(0, 1000, size=20))
    assert restored.standard_normal() == rng.standard_normal()


# --- safety: YAML and shells ----------------------------------------------------------------------------------------
UNSAFE = [r'shell\s*=\s*True', r'\bos\.system\(', r'\bos\.popen\(', r'\bsubprocess\.(getoutput|getstatusoutput)\(',
          r'\byaml\.(load|full_load|unsafe_load|load_all)\(', r'\byaml\.Loader\b', r'(?<![.\w])eval\(', r'(?<![.\w])exec\(',
          r'\bpickle\.loads?\(']


def test_package_source_reads_yaml_safely_and_never_uses_a_shell():
    sources = [p for folder in ('nni_labelfree', 'strategies', 'search_spaces') for p in (REPO / folder).rglob('*.py')]
    assert len(sources) > 10
    hits = [f'{p.relative_to(REPO)}:{n}: {line.strip()}' for p in sources
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if any(re.search(pattern, line) for pattern in UNSAFE)]
    assert not hits, hits
    assert not any(re.search(p, 'model.eval()') for p in UNSAFE) and any(re.search(p, 'x = eval(s)') for p in UNSAFE)
    loads = [f'{p.relative_to(REPO)}: {line.strip()}' for p in sources for line in p.read_text().splitlines()
             if 'torch.load(' in line and 'weights_only=True' not in line]
    assert not loads, loads
    assert 'yaml.safe_load' in (REPO / 'nni_labelfree' / 'experiment' / 'launcher.py').read_text()


PINAS_FLAGS = {'strategy': 'pinas', 'data': 'noise', 'channels': 4, 'cells_per_stage': 1, 'num_images': 128,
               'batch_size': 32, 'epochs': 6, 'queue_size': 64, 'ema_momentum': 0.99, 'num_threads': 1, 'seed': 7,
               'evolution': '{population_size: 4, top_k: 2, num_mutation: 2, num_crossover: 2, generations: 1}'}


@pytest.mark.slow  # two Pi-NAS searches through the CLI (its in-process resume is exact in tests/test_pinas.py)
def test_sigkilled_pinas_search_resumes_to_the_uninterrupted_result(tmp_path):
    reference = tmp_path / 'reference'
    assert _search_in_process(reference, PINAS_FLAGS) == 0
    output = tmp_path / 'out'
    _start_and_kill_after(output, KILL_AFTER, tmp_path / 'killed.log', flags=PINAS_FLAGS)
    done = subprocess.run([str(SCRIPT), *_argv(output, PINAS_FLAGS)], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'Resuming the search from' in done.stderr, done.stderr[-3000:]
    _assert_same_search(output, reference)  # architecture, fitness, per-epoch contrastive metrics, student weights
    checkpoint = torch.load(checkpoint_path(output / 'checkpoints', PINAS_FLAGS['epochs']), weights_only=True)
    assert checkpoint['pinas']['queue']['keys'].shape[0] == PINAS_FLAGS['queue_size']
