"""bench.pinas_quality: argument errors, the seeded sample, and a tiny search rebuilt and rescored exactly."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import pinas_quality
from nni_labelfree.benchmarks import nasbench201 as nb
from nni_labelfree.benchmarks.nasbench201 import NB201_NUM_CELLS, flat_index
from nni_labelfree.experiment import cli

pytestmark = pytest.mark.usefixtures('one_torch_thread')

CIFAR_JPEG = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'images' / 'cifar10_jpeg.tar.gz'
TINY_SEARCH = {'strategy': 'pinas', 'space': 'nasbench201', 'channels': 4, 'cells_per_stage': 1, 'num_images': 96,
               'batch_size': 16, 'num_threads': 1, 'seed': 0, 'epochs': 1, 'data': 'imagefolder',
               'data_root': CIFAR_JPEG, 'selection': 'linear_eval',
               'evolution': '{population_size: 4, top_k: 2, num_mutation: 2, num_crossover: 2, generations: 1}'}


@pytest.mark.parametrize('flags, message', [
    (['--sample', '1'], '--sample must lie in'),
    (['--sample', str(NB201_NUM_CELLS + 1)], '--sample must lie in'),
    (['--sample', '5', '--bn-controls', '6'], '--bn-controls must lie in'),
    (['--seed', '-1'], '--seed must be a non-negative'),
])
def test_bad_arguments_exit_with_a_message(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        pinas_quality.parse_args(['--run', str(tmp_path), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_missing_run_folder_or_another_strategy_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pinas_quality.parse_args(['--run', str(tmp_path / 'absent')])
    assert 'is not a folder' in capsys.readouterr().err
    with pytest.raises(ValueError, match='no config.json'):
        pinas_quality.load_run_config(tmp_path)
    (tmp_path / 'config.json').write_text(json.dumps({'strategy': 'rlnas'}))
    with pytest.raises(ValueError, match='needs strategy pinas'):
        pinas_quality.load_run_config(tmp_path)


def test_the_sample_is_distinct_seeded_and_uniform_over_the_space():
    first, again, other = (pinas_quality.sample_cells(300, seed) for seed in (0, 0, 1))
    assert first.shape == (300, 6) and len(set(flat_index(first).tolist())) == 300
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    with pytest.raises(ValueError, match='count must lie in'):
        pinas_quality.sample_cells(0, 0)


@pytest.mark.skipif(not CIFAR_JPEG.exists(), reason=f'{CIFAR_JPEG} is absent (the shared CIFAR-10 JPEG archive)')
def test_a_finished_search_is_rebuilt_exactly_and_scores_a_sample(tmp_path):
    argv = ['search', '--output', str(tmp_path)]
    for key, value in TINY_SEARCH.items():
        argv += [f'--{key.replace("_", "-")}', str(value)]
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    result = pinas_quality.run(tmp_path, 4, seed=0, bn_controls=3)
    assert result['run_top_rescored']['max_abs_diff'] == 0.0  # the run's own fitness values come back exactly
    assert result['checkpoint'] == 'search_epoch0001.ckpt' and result['trained']['epochs'] == 1
    assert len(result['cells']) == 4 and result['bn_recalibration']['cells'] == 3
    for name in ('linear_eval', 'label_free', 'label_free_retrieval'):
        assert set(result['criteria'][name]) >= {'tau', 'tau_within_size', 'top1_acc'}
    assert set(result['rules']) == {'convs_on_valid_paths', 'params_on_valid_paths', 'op_type_order'}
    assert 'pinas: linear_eval' in pinas_quality.format_table(result)
    ran = json.loads((tmp_path / 'arch.json').read_text())  # the run's own criterion exports the run's own cell
    assert result['exports'][ran['selection']]['nb201_string'] == nb.arch_to_string(ran['arch'])
    assert set(result['exports']) == {'linear_eval', 'label_free'}
