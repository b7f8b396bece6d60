"""UnNAS's sample-based correlation experiment (``nni-labelfree correlate``) on tiny NAS-Bench-201 networks."""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
from helpers import quadrant_images

from nni_labelfree.data import TensorImageDataset
from nni_labelfree.experiment.cli import main as cli_main
from nni_labelfree.experiment.correlate import (collect, correlations, labeled_images, resolve_correlate_config,
                                                run_correlate, sample_architectures, _build_space)

REPO = Path(__file__).resolve().parents[1]
CORRELATE_YAML = REPO / 'experiment_configs' / 'correlate' / 'unnas_correlate.yml'
CIFAR_JPEG = REPO.parent / 'shared' / 'data' / 'images' / 'cifar10_jpeg.tar.gz'
TINY = dict(space='nasbench201', archs=4, tasks='rotation,supervised', epochs=1, channels=4, cells_per_stage=1,
            num_images=96, batch_size=16, image_size=16, seed=0)


def _generated_images(count: int = 96, size: int = 16, seed: int = 0) -> TensorImageDataset:
    return quadrant_images(count, size, seed)


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def test_correlate_writes_results_and_a_rho_in_range(tmp_path):
    config = resolve_correlate_config(TINY)
    result = run_correlate(config, tmp_path, images=_generated_images())
    assert (tmp_path / 'results.json').exists() and (tmp_path / 'results.csv').exists()
    saved = json.loads((tmp_path / 'results.json').read_text())
    assert len(saved['rows']) == 4 * 2
    assert {r['task'] for r in saved['rows']} == {'rotation', 'supervised'}
    assert all(0.0 <= r['accuracy'] <= 1.0 for r in saved['rows'])
    rho = result['rho']['rotation']
    # NaN only when one side is constant (every arch at the same accuracy after one epoch): documented in the table.
    assert math.isnan(rho) or -1.0 <= rho <= 1.0
    assert len((tmp_path / 'results.csv').read_text().splitlines()) == 1 + 8


def test_same_seed_same_architectures_other_seed_differs():
    space = _build_space(resolve_correlate_config(TINY))
    first, again = sample_architectures(space, 5, seed=3), sample_architectures(space, 5, seed=3)
    assert first == again and len({json.dumps(a, sort_keys=True) for a in first}) == 5
    assert sample_architectures(space, 5, seed=4) != first
    assert all(space.sample_filter(a) for a in first)


def test_darts_samples_have_two_inputs_per_node():
    from nni_labelfree.search_spaces.darts import darts_sample_is_valid
    space = _build_space(resolve_correlate_config({'space': 'darts', 'channels': 4, 'num_cells': 3}))
    assert all(darts_sample_is_valid(a) for a in sample_architectures(space, 3, seed=0))


def test_correlations_of_known_rankings():
    rows = [{'arch_index': i, 'task': t, 'accuracy': acc} for i in range(4)
            for t, acc in (('supervised', i / 10), ('rotation', i / 5), ('jigsaw', -i / 5))]
    rho = correlations(rows)
    assert rho['rotation'] == pytest.approx(1.0) and rho['jigsaw'] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match='Add supervised'):
        correlations([r for r in rows if r['task'] != 'supervised'])


def test_collect_from_trial_files(tmp_path):
    for i in range(3):
        for task, acc in (('supervised', 0.1 * i), ('rotation', 0.3 + 0.1 * i)):
            trial = tmp_path / 'trials' / f'{task}{i}'
            trial.mkdir(parents=True)
            (trial / 'correlate_trial.json').write_text(json.dumps({'arch_index': i, 'task': task, 'accuracy': acc}))
    assert collect(tmp_path)['rho']['rotation'] == pytest.approx(1.0)
    assert (tmp_path / 'results.json').exists()
    with pytest.raises(FileNotFoundError, match='correlate_trial.json'):
        collect(tmp_path / 'trials' / 'supervised0' / 'nothing')


@pytest.mark.parametrize('flags, message', [
    (['--tasks', 'rotation,spinning,supervised'], 'Unknown task'),
    (['--archs', '2'], 'archs must be an integer >= 3'),
    (['--tasks', 'rotation,jigsaw'], 'supervised'),
    (['--space', 'resnest'], "samples cells of nasbench201 or darts, not 'resnest'"),
    (['--spaec', 'darts'], None),
])
def test_bad_input_gets_one_clear_error(flags, message, tmp_path, capsys):
    argv = ['correlate', '--data', 'noise', '--num-images', '40', '--output', str(tmp_path), *flags]
    if message is None:  # argparse: unknown flag
        with pytest.raises(SystemExit):
            cli_main(argv)
        return
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err


def test_supervised_on_unlabeled_images_says_so(tmp_path):
    config = resolve_correlate_config({**TINY, 'data': 'noise', 'num_images': 40, 'archs': 3})
    with pytest.raises(ValueError, match='needs labeled images'):
        run_correlate(config, tmp_path)


@pytest.mark.skipif(not CIFAR_JPEG.exists(), reason=f'{CIFAR_JPEG} is absent (the shared CIFAR-10 JPEG archive)')
def test_imagefolder_class_subfolders_become_labels():
    config = resolve_correlate_config({'data': 'imagefolder', 'data_root': str(CIFAR_JPEG), 'num_images': 40})
    images = labeled_images(config)
    labels = [images[i][1] for i in range(len(images))]
    assert len(labels) == 40 and min(labels) >= 0 and images.num_true_classes == 10


def test_shipped_nnictl_config_resolves_for_every_trial():
    from nni_labelfree.experiment.launcher import load_experiment_config
    from nni_labelfree.experiment.trial import parse_set_flags
    config = load_experiment_config(CORRELATE_YAML)
    tokens = shlex.split(config.trial_command)
    assert tokens[:4] == ['python3', '-m', 'nni_labelfree.experiment.correlate', '--trial']
    assert Path(config.canonical_copy().trial_code_directory).resolve() == REPO
    assert config.tuner.name == 'GridSearch' and config.max_trial_number == len(
        config.search_space['arch_index']['_value']) * len(config.search_space['task']['_value'])
    flags = parse_set_flags([t for t in tokens[4:] if t != '--set'])
    space = config.search_space
    assert space['arch_index']['_value'] == list(range(flags['archs']))
    for index in space['arch_index']['_value']:
        for task in space['task']['_value']:
            resolved = resolve_correlate_config(flags, {'arch_index': index, 'task': task})
            assert resolved.task == task and resolved.arch_index == index
    assert not set(flags) & set(space), 'a tuner-chosen key also fixed by --set is silently overridden'
    root = REPO / flags['data_root']
    assert root.resolve() == CIFAR_JPEG.resolve() or not CIFAR_JPEG.exists()
