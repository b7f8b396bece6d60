"""bench.collect_trials turns a finished quality experiment's trial folders into one table with per-epoch curves."""
import json

import pytest

from bench.collect_trials import collect_trials, main


def _trial(root, name, task, acc, skips, finished=True):
    folder = root / 'environments' / 'local-env' / 'trials' / name
    folder.mkdir(parents=True)
    (folder / 'config.json').write_text(json.dumps({'task': task, 'seed': 0}))
    history = [{'epoch': e + 1, 'train_loss': 2.0 - e, 'train_acc': 0.1 * e, 'skip_connections': s,
                'exported_acc': 90.0 + e} for e, s in enumerate(skips)]
    (folder / 'metrics.json').write_text(json.dumps(history))
    if finished:
        (folder / 'arch.json').write_text(json.dumps({'nb201_string': f'|{task}|', 'test_acc': acc,
                                                      'skip_connections': skips[-1], 'wall_time': 12.5}))


def test_rows_carry_curves_best_first_and_skip_unfinished_trials(tmp_path):
    _trial(tmp_path, 'A', 'rotation', 91.5, [0, 1, 2])
    _trial(tmp_path, 'B', 'jigsaw', 93.1, [0, 0])
    _trial(tmp_path, 'C', 'colorization', None, [3], finished=False)
    rows = collect_trials(tmp_path, ['task'])
    assert [r['trial'] for r in rows] == ['B', 'A']  # best table accuracy first; C left no arch.json
    assert rows[1]['task'] == 'rotation' and rows[1]['skip_curve'] == [0, 1, 2] and rows[1]['epochs_done'] == 3
    assert rows[1]['exported_acc_curve'] == [90.0, 91.0, 92.0] and rows[1]['train_loss_first_last'] == [2.0, 0.0]
    out = tmp_path / 'out.json'
    assert main([str(tmp_path), '--keys', 'task', '--output', str(out), '--note', 'n']) == 0
    assert json.loads(out.read_text())['rows'] == rows


def test_a_folder_that_is_not_an_experiment_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match='local NNI experiment'):
        collect_trials(tmp_path, [])
