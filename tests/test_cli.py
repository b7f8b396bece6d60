"""``nni-labelfree search`` end to end on a tiny setting, its artifacts, and its handling of bad inputs."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nni_labelfree.benchmarks.nasbench201 import NB201_LABELS, load_nb201_table, string_to_arch
from nni_labelfree.experiment import cli, trial
from nni_labelfree.experiment.config import SearchConfig, resolve_config

TINY_FLAGS = {'channels': 8, 'cells_per_stage': 1, 'num_images': 64, 'batch_size': 32, 'epochs': 2, 'data': 'noise'}


def _argv(flags: dict) -> list[str]:
    argv = []
    for key, value in flags.items():
        argv += [f'--{key.replace("_", "-")}', str(value)]
    return argv


def _tiny_search_argv(output: Path, **overrides) -> list[str]:
    return ['search', *_argv({**TINY_FLAGS, **overrides}), '--output', str(output)]


@pytest.fixture(scope='module')
def search_run(tmp_path_factory):
    """One tiny search through ``cli.main``; returns (exit code, output folder, stdout)."""
    output = tmp_path_factory.mktemp('search') / 'out'
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(_tiny_search_argv(output))
    return code, output, stdout.getvalue()


def _load(path: Path):
    return torch.load(path, map_location='cpu', weights_only=True)


# --- a successful search -------------------------------------------------------------------------------------------
def test_search_returns_zero_and_writes_every_artifact(search_run):
    code, output, stdout = search_run
    assert code == 0
    for name in ('arch.json', 'config.json', 'metrics.json', 'checkpoints/supernet_init.pt',
                 'checkpoints/supernet_final.pt'):
        assert (output / name).is_file(), name
    assert f'Artifacts in {output}/' in stdout


def test_arch_json_is_a_valid_nb201_cell_with_its_accuracy(search_run):
    _, output, stdout = search_run
    result = json.loads((output / 'arch.json').read_text())
    assert set(result['arch']) == set(NB201_LABELS)
    assert string_to_arch(result['nb201_string']) == result['arch']
    assert f'Exported architecture: {result["nb201_string"]}' in stdout
    assert 0 < result['test_acc'] <= 100
    assert result['test_acc'] == pytest.approx(load_nb201_table().accuracy(result['arch']))
    assert result['default'] == result['test_acc']
    assert math.isfinite(result['angle']) and math.isfinite(result['kendall_tau'])
    assert (result['seed'], result['data']) == (0, 'noise')
    assert result['top'][0] == [result['arch'], result['angle']]  # the exported cell is the top-ranked one


def test_config_json_is_the_resolved_config_of_the_flags(search_run):
    _, output, _ = search_run
    saved = json.loads((output / 'config.json').read_text())
    for key, value in TINY_FLAGS.items():
        assert saved[key] == value, key
    assert saved['output_dir'] == str(output)  # the config records where its artifacts went
    expected = {**TINY_FLAGS, 'output_dir': str(output)}
    assert saved == resolve_config(expected).to_dict()
    assert resolve_config(saved) == resolve_config(expected)


def test_metrics_json_has_one_entry_per_epoch(search_run):
    _, output, _ = search_run
    history = json.loads((output / 'metrics.json').read_text())
    assert [m['epoch'] for m in history] == [1, 2]
    for metrics in history:
        assert {'default', 'train_loss', 'train_acc', 'kendall_tau'} <= set(metrics)
        assert math.isfinite(metrics['train_loss']) and 0 <= metrics['train_acc'] <= 1
        assert -1 <= metrics['kendall_tau'] <= 1 and metrics['default'] == metrics['kendall_tau']
    result = json.loads((output / 'arch.json').read_text())
    assert result['train_loss'] == history[-1]['train_loss']


def test_checkpoints_load_with_weights_only_and_training_moved_the_weights(search_run):
    _, output, _ = search_run
    initial = _load(output / 'checkpoints' / 'supernet_init.pt')
    final = _load(output / 'checkpoints' / 'supernet_final.pt')
    assert set(final) == {'initial', 'final'}
    assert initial and set(initial) == set(final['final'])
    assert all(isinstance(v, torch.Tensor) for v in initial.values())
    changed = [k for k in initial if initial[k].is_floating_point() and not torch.equal(initial[k], final['final'][k])]
    assert changed, 'no supernet tensor changed during training'
    # theta_0 kept for the angle is the supernet before training
    assert final['initial'] and set(final['initial']) <= set(initial)
    for key, value in final['initial'].items():
        assert torch.equal(value, initial[key]), key
    assert not (output / 'checkpoints' / 'supernet_final.pt.tmp').exists()


def test_checkpoint_every_saves_intermediate_checkpoints(tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(_tiny_search_argv(tmp_path, checkpoint_every=1)) == 0
    names = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
    assert len(names) > 2, names


# --- bad inputs: exit code 2 and one clear line on stderr ----------------------------------------------------------
def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    prefixes = ('nni-labelfree: error:', 'nni-labelfree trial failed:')
    lines = [line for line in err.splitlines() if line.startswith(prefixes)]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize('overrides, expected', [
    ({'strategy': 'foo'}, ['strategy', "'foo'", 'rlnas']),
    ({'space': 'foo'}, ['search space', "'foo'", 'nasbench201']),
    ({'data': 'foo'}, ['data source', "'foo'", 'noise', 'imagefolder']),
    ({'data': 'imagefolder'}, ['imagefolder', 'root']),
    ({'epochs': 0}, ['epochs', 'positive integer']),
    ({'label_mode': 'bogus'}, ['label_mode', "'bogus'", 'uniform_once']),
    ({'angle_edges': 'mean'}, ['angle_edges', "'mean'", 'cell_mean']),
    ({'space': 'mobilenet', 'angle_edges': 'cell_mean'}, ['cell_mean', 'MobileNetSpace', 'cell_dags']),
])
def test_bad_search_settings_exit_2_with_a_clear_message(tmp_path, capsys, overrides, expected):
    assert cli.main(_tiny_search_argv(tmp_path / 'out', **overrides)) == 2
    line = _error_line(capsys)
    for word in expected:
        assert word in line, (word, line)
    assert not (tmp_path / 'out' / 'arch.json').exists()


def test_imagefolder_with_a_missing_folder_exits_2(tmp_path, capsys):
    missing = tmp_path / 'no_such_folder'
    assert cli.main(_tiny_search_argv(tmp_path / 'out', data='imagefolder', data_root=missing)) == 2
    line = _error_line(capsys)
    assert str(missing) in line and 'does not exist' in line


def test_imagefolder_with_an_empty_folder_exits_2(tmp_path, capsys):
    empty = tmp_path / 'empty'
    (empty / 'sub').mkdir(parents=True)
    (empty / 'notes.txt').write_text('not an image')
    assert cli.main(_tiny_search_argv(tmp_path / 'out', data='imagefolder', data_root=empty)) == 2
    line = _error_line(capsys)
    assert str(empty) in line and 'no image files' in line


def test_unknown_flag_is_refused_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(_tiny_search_argv(tmp_path) + ['--epochz', '3'])
    assert info.value.code == 2
    assert '--epochz' in capsys.readouterr().err


def test_trial_entry_refuses_an_unknown_key(capsys):
    assert trial.main(['--set', 'epochz=3']) == 2
    line = _error_line(capsys)
    assert "Unknown configuration key 'epochz'" in line and "Did you mean 'epochs'?" in line


def test_trial_entry_refuses_a_malformed_pair(capsys):
    assert trial.main(['--set', 'epochs']) == 2
    assert "--set expects key=value, got 'epochs'" in _error_line(capsys)


def test_trial_subcommand_of_the_cli_refuses_an_unknown_key(capsys):
    assert cli.main(['trial', '--set', 'epochz=3']) == 2
    assert "'epochz'" in _error_line(capsys)


def test_experiment_subcommand_with_a_missing_config_exits_2(tmp_path, capsys):
    missing = tmp_path / 'nope.yml'
    assert cli.main(['experiment', str(missing), '--port', '1']) == 2
    line = _error_line(capsys)
    assert str(missing) in line and 'does not exist' in line


# --- the installed console script -----------------------------------------------------------------------------------
def test_console_script_help():
    script = Path(sys.executable).parent / 'nni-labelfree'
    assert script.is_file(), f'{script} missing: pip install -e . in the venv'
    done = subprocess.run([str(script), 'search', '--help'], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for flag in ('--output', '--strategy', '--num-images', '--cells-per-stage', '--checkpoint-every'):
        assert flag in done.stdout
    assert '--output-dir' not in done.stdout  # output_dir is set through --output


def test_every_config_key_but_output_dir_is_a_search_flag():
    parser = cli.build_parser()
    for key in {f.name for f in dataclasses.fields(SearchConfig)} - {'output_dir'}:
        args = parser.parse_args(['search', f'--{key.replace("_", "-")}', '7'])
        assert getattr(args, key) == 7, key
    with pytest.raises(SystemExit):
        parser.parse_args(['search', '--output-dir', 'x'])
