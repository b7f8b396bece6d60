"""bench.search_quality --rescore: a finished run's saved supernet scored again gives the run's own numbers."""
from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from bench import search_quality
from nni_labelfree.benchmarks import nasbench201 as nb
from nni_labelfree.experiment import cli

pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('rlnas') / 'run'
    argv = ['search', '--strategy', 'rlnas', '--channels', '8', '--cells-per-stage', '1', '--num-images', '64',
            '--batch-size', '32', '--epochs', '3', '--data', 'noise', '--num-threads', '1', '--output', str(out)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(argv) == 0
    return out


def test_rescore_reproduces_the_runs_own_tau_and_scores_every_policy(tiny_run):
    truth, groups = nb.load_nb201_table().values('cifar10_test'), nb.params_on_valid_paths(nb.all_op_indices())
    result = search_quality.rescore(tiny_run, truth, groups)
    reported = json.loads((tiny_run / 'arch.json').read_text())['kendall_tau']  # RLNAS's default angle, last epoch
    assert result['rlnas']['tau'] == pytest.approx(reported, abs=1e-9)
    assert set(search_quality.POLICIES) <= set(result)
    assert result['cell_mean']['tau'] != pytest.approx(result['rlnas']['tau'], abs=1e-6)


def test_rescore_writes_rescore_json(tiny_run, capsys):
    search_quality.main(['--rescore', str(tiny_run)])
    saved = json.loads((tiny_run / 'rescore.json').read_text())
    assert saved['run'] == str(tiny_run) and 'cell_mean' in capsys.readouterr().out


def test_rescore_refuses_folders_it_cannot_score(tmp_path):
    with pytest.raises(SystemExit, match='lacks config.json or checkpoints/supernet_final.pt'):
        search_quality.main(['--rescore', str(tmp_path)])
    (tmp_path / 'checkpoints').mkdir()
    torch.save({'initial': {}, 'final': {}}, tmp_path / 'checkpoints' / 'supernet_final.pt')
    (tmp_path / 'config.json').write_text(json.dumps({'strategy': 'pinas', 'space': 'nasbench201'}))
    with pytest.raises(SystemExit, match='needs RLNAS on nasbench201'):
        search_quality.main(['--rescore', str(tmp_path)])


def test_rescore_refuses_training_flags_and_unloadable_supernets(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        search_quality.main(['--rescore', str(tiny_run), '--seed', '1'])
    assert info.value.code == 2 and 'drop --seed' in capsys.readouterr().err
    broken = tmp_path / 'broken'
    (broken / 'checkpoints').mkdir(parents=True)
    (broken / 'config.json').write_text((tiny_run / 'config.json').read_text())
    (broken / 'checkpoints' / 'supernet_final.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(SystemExit, match='cannot be loaded into the space'):
        search_quality.main(['--rescore', str(broken)])
