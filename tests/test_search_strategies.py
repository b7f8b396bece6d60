"""SGAS, UnrealNAS and Pi-NAS through ``nni-labelfree search`` (the path nnictl trials take): artifacts, per-epoch
metrics for the web UI, and the errors a user gets for data a strategy cannot use."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from nni_labelfree.benchmarks.nasbench201 import NB201_LABELS, arch_to_string
from nni_labelfree.data import default_num_classes
from nni_labelfree.experiment import cli
from nni_labelfree.experiment.config import resolve_config

CIFAR_JPEG = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'images' / 'cifar10_jpeg.tar.gz'
TINY = {'space': 'nasbench201', 'channels': 4, 'cells_per_stage': 1, 'num_images': 96, 'batch_size': 16,
        'num_threads': 1, 'seed': 0}


def _search(output: Path, **flags) -> int:
    argv = ['search', '--output', str(output)]
    for key, value in {**TINY, **flags}.items():
        argv += [f'--{key.replace("_", "-")}', str(value)]
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return cli.main(argv)
    finally:
        torch.set_num_threads(threads)


def _artifacts(output: Path) -> tuple[dict, list[dict]]:
    return json.loads((output / 'arch.json').read_text()), json.loads((output / 'metrics.json').read_text())


@pytest.mark.skipif(not CIFAR_JPEG.exists(), reason=f'{CIFAR_JPEG} is absent (the shared CIFAR-10 JPEG archive)')
def test_sgas_with_true_labels_decides_every_edge_and_reports_them(tmp_path):
    out = tmp_path / 'sgas'
    assert _search(out, strategy='sgas', data='imagefolder', data_root=CIFAR_JPEG, epochs=8, decision_warmup=1,
                   decision_freq=1) == 0
    result, history = _artifacts(out)
    decided = [m['sgas_decided_edges'] + m['sgas_pruned_edges'] for m in history]
    assert decided == sorted(decided) and decided[0] <= 1 and decided[-1] == len(NB201_LABELS)
    assert history[-1]['sgas_open_edges'] == 0
    assert set(result['arch']) == set(NB201_LABELS) and 'none' not in result['arch'].values()  # SGAS never picks none
    assert result['nb201_string'] == arch_to_string(result['arch']) and 0 < result['test_acc'] <= 100
    assert result['skip_connections'] == sum(v == 'skip_connect' for v in result['arch'].values())


def test_sgas_refuses_unlabeled_images_before_training(tmp_path, capsys):
    assert _search(tmp_path / 'x', strategy='sgas', data='noise', epochs=1) == 2
    err = capsys.readouterr().err
    assert 'SGAS searches with true labels' in err and 'unrealnas' in err
    assert not (tmp_path / 'x' / 'checkpoints').exists() or not list((tmp_path / 'x' / 'checkpoints').iterdir())


@pytest.mark.parametrize('kind', ['rlgd', 'rlrn'])
def test_unrealnas_searches_without_real_data_and_records_its_settings(tmp_path, kind):
    out = tmp_path / kind
    assert _search(out, strategy='unrealnas', unreal_data=kind, algorithm='sgas', data='noise', epochs=7,
                   decision_warmup=1, decision_freq=1) == 0
    result, history = _artifacts(out)
    assert (result['unreal_data'], result['algorithm']) == (kind, 'sgas')
    assert set(result['arch']) == set(NB201_LABELS) and 'none' not in result['arch'].values()
    assert history[-1]['sgas_open_edges'] == 0 and len(history) == 7
    state = torch.load(out / 'checkpoints' / 'supernet_final.pt', weights_only=True)['final']
    classifier = [v for k, v in state.items() if k.endswith('weight') and v.dim() == 2][-1]
    assert classifier.shape[0] == default_num_classes(kind, TINY['num_images'])  # the paper's count, scaled


def test_unrealnas_darts_keeps_alphas_still_during_its_warm_up(tmp_path):
    out = tmp_path / 'darts'
    assert _search(out, strategy='unrealnas', unreal_data='rlrn', algorithm='darts', data='noise', epochs=2) == 0
    state = torch.load(out / 'checkpoints' / 'supernet_final.pt', weights_only=True)['final']
    alphas = [v for k, v in state.items() if k.endswith('_arch_alpha')]
    assert alphas and all(torch.count_nonzero(a) == 0 for a in alphas)  # zero-initialised, 5 warm-up epochs


def test_config_refuses_bad_strategy_settings():
    for bad, message in [({'unreal_data': 'fractal'}, 'unreal_data'), ({'algorithm': 'enas'}, 'algorithm'),
                         ({'sgas_criterion': 3}, 'sgas_criterion'), ({'queue_size': 0}, 'queue_size'),
                         ({'ema_momentum': 1.0}, 'ema_momentum'), ({'unreal_classes': 1}, 'unreal_classes'),
                         ({'selection': 'oracle'}, 'selection')]:
        with pytest.raises(ValueError, match=message):
            resolve_config(bad)


EVOLUTION = '{population_size: 6, top_k: 3, num_mutation: 3, num_crossover: 3, generations: 2}'


@pytest.mark.skipif(not CIFAR_JPEG.exists(), reason=f'{CIFAR_JPEG} is absent (the shared CIFAR-10 JPEG archive)')
@pytest.mark.parametrize('selection', ['linear_eval', 'label_free'])
def test_pinas_reports_contrastive_metrics_and_selects_by_the_chosen_criterion(tmp_path, selection):
    out = tmp_path / selection
    assert _search(out, strategy='pinas', data='imagefolder', data_root=CIFAR_JPEG, epochs=2, selection=selection,
                   evolution=EVOLUTION) == 0
    result, history = _artifacts(out)
    assert result['selection'] == selection and 'angle' not in result
    assert set(result['arch']) == set(NB201_LABELS) and result['nb201_string'] == arch_to_string(result['arch'])
    scores = [score for _, score in result['top']]
    assert scores == sorted(scores, reverse=True) and result['fitness'] == scores[0]
    if selection == 'linear_eval':
        assert 0 <= result['fitness'] <= 1  # linear-probe accuracy on the held-out labeled images
    for epoch in history:
        assert 0 < epoch['cross_path_similarity'] <= 1 and epoch['collapsed'] == 0
        assert epoch['contrastive_loss'] == epoch['train_loss'] and epoch['contrastive_loss'] > 0


def test_grouped_tuner_parameters_become_config_keys():
    from nni_labelfree.experiment.config import flatten_parameter_groups
    params = {'ablation': {'cross_path': False, 'negatives': True}, 'seed': 2,
              'evolution': {'population_size': 4}}  # a real dict-valued key stays a dict
    flat = flatten_parameter_groups(params)
    assert flat == {'cross_path': False, 'negatives': True, 'seed': 2, 'evolution': {'population_size': 4}}
    config = resolve_config({'strategy': 'pinas'}, flat)
    assert (config.cross_path, config.negatives, config.evolution) == (False, True, {'population_size': 4})
    with pytest.raises(ValueError, match='Unknown configuration key'):
        resolve_config(flatten_parameter_groups({'ablation': {'cros_path': False}}))


def test_summary_table_shows_what_the_tuner_varies():
    from nni_labelfree.experiment.launcher import load_experiment_config
    from nni_labelfree.experiment.launcher_summary import SUMMARY_COLUMNS, columns_for
    repo = Path(__file__).resolve().parents[1] / 'experiment_configs'
    unreal = columns_for(load_experiment_config(repo / 'unrealnas_cpu.yml'))
    assert unreal[:4] == ('trial', 'status', 'unreal_data', 'algorithm') and 'skip_connections' in unreal
    assert set(SUMMARY_COLUMNS) <= set(unreal)
    assert columns_for(load_experiment_config(repo / 'quickstart.yml')) == SUMMARY_COLUMNS
    assert 'ablation' in columns_for(load_experiment_config(repo / 'pinas.yml'))
