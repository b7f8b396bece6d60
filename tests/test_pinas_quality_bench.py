"""bench.pinas_quality and bench.pinas_criterion_noise: argument errors, the seeded sample, and a tiny search rebuilt
and rescored exactly."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import pinas_criterion_noise, pinas_quality
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


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """A one-epoch Pi-NAS search on 96 CIFAR JPEGs, through the command line."""
    if not CIFAR_JPEG.exists():
        pytest.skip(f'{CIFAR_JPEG} is absent (the shared CIFAR-10 JPEG archive)')
    output = tmp_path_factory.mktemp('tiny_pinas')
    argv = ['search', '--output', str(output)]
    for key, value in TINY_SEARCH.items():
        argv += [f'--{key.replace("_", "-")}', str(value)]
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return output


@pytest.fixture(scope='module')
def tiny_quality(tiny_run):
    return pinas_quality.run(tiny_run, 4, seed=0, bn_controls=3)


def test_a_finished_search_is_rebuilt_exactly_and_scores_a_sample(tiny_run, tiny_quality):
    result = tiny_quality
    assert result['run_top_rescored']['max_abs_diff'] == 0.0  # the run's own fitness values come back exactly
    assert result['checkpoint'] == 'search_epoch0001.ckpt' and result['trained']['epochs'] == 1
    assert len(result['cells']) == 4 and result['bn_recalibration']['cells'] == 3
    for name in ('linear_eval', 'label_free', 'label_free_retrieval'):
        assert set(result['criteria'][name]) >= {'tau', 'tau_within_size', 'top1_acc'}
    assert set(result['rules']) == {'convs_on_valid_paths', 'params_on_valid_paths', 'op_type_order'}
    assert 'pinas: linear_eval' in pinas_quality.format_table(result)
    ran = json.loads((tiny_run / 'arch.json').read_text())  # the run's own criterion exports the run's own cell
    assert result['exports'][ran['selection']]['nb201_string'] == nb.arch_to_string(ran['arch'])
    assert set(result['exports']) == {'linear_eval', 'label_free'}


def test_criterion_noise_rebuilds_the_runs_criteria_and_scores_their_variants(tiny_run, tiny_quality, capsys):
    result = pinas_criterion_noise.run(tiny_run, 4, seed=0, view_seeds=[1, 2], exports=True)
    columns = tiny_quality['cell_columns']
    for name in ('linear_eval', 'label_free'):  # the same criteria as bench.pinas_quality, value for value
        assert result['cells'][name] == [row[columns.index(name)] for row in tiny_quality['cells']]
    assert result['cells']['nb201_string'] == [row[0] for row in tiny_quality['cells']]
    expected = {'linear_eval', 'linear_eval_other_bn', 'linear_eval_all_bn', 'probe_per_cell', 'knn', 'label_free',
                'label_free_seed1', 'label_free_seed2', 'label_free_seed1_retrieval', 'label_free_seed2_retrieval',
                'label_free_teacher_seed1', 'label_free_teacher_seed2'}
    assert set(result['criteria']) == expected
    for name in ('probe_per_cell', 'knn', 'linear_eval_other_bn', 'label_free_seed1_retrieval'):
        assert all(0.0 <= v <= 1.0 for v in result['cells'][name])
    assert set(result['agreement_kendall_tau']) >= {'label_free seed 1 vs 2', 'linear_eval vs linear_eval_other_bn'}
    for cell in result['exports'].values():
        assert nb.string_to_arch(cell['nb201_string']) and 0 < cell['cifar10_test'] <= 100
    assert set(result['exports']) == {'label_free_seed1', 'label_free_seed2'}
    with pytest.raises(SystemExit):
        pinas_criterion_noise.parse_args(['--run', str(tiny_run), '--view-seeds', '3'])
    assert 'at least two different seeds' in capsys.readouterr().err
