"""Retraining exported architectures: arch loading, configuration, augmentation, networks, training, trial, configs.

Training runs use the shared CIFAR-10 JPEG archive (class subfolders give the labels) at toy size: width 4, one cell
per stage or 3 DARTS cells, 160 training images, a few epochs of 4 steps.
"""
from __future__ import annotations

import json
import random
import shlex
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import nni
from nni_labelfree.experiment import cli, retrain
from nni_labelfree.experiment.launcher import load_experiment_config
from nni_labelfree.experiment.retrain import build_network, parse_retrain_set_flags, run_retrain
from nni_labelfree.experiment.retrain_arch import load_architecture
from nni_labelfree.experiment.retrain_config import PRESETS, resolve_retrain_config
from nni_labelfree.experiment.retrain_data import BatchAugment
from nni_labelfree.search_spaces.darts import arch_from_genotype, genotype_from_arch, random_darts_sample
from nni_labelfree.search_spaces.darts_retrain import DartsRetrainNetwork

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'images' / 'cifar10_jpeg.tar.gz'
NB201 = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|'
POOLS = '|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|'
GENOTYPE = genotype_from_arch(random_darts_sample(random.Random(3)))
TINY = {'preset': 'cpu', 'data': 'imagefolder', 'num_images': 160, 'test_images': 64, 'val_fraction': 0.2,
        'epochs': 5, 'batch_size': 32, 'channels': 4, 'num_threads': 1, 'learning_rate': 0.1}
RETRAIN_PREFIX = ['python3', '-m', 'nni_labelfree.experiment.retrain']


@pytest.fixture(scope='module')
def archive() -> Path:
    if not ARCHIVE.is_file():
        pytest.skip(f'the shared CIFAR-10 JPEG archive {ARCHIVE} is absent (it ships beside the repository)')
    return ARCHIVE


def tiny(archive: Path, arch, **overrides):
    return resolve_retrain_config({**TINY, 'data_root': str(archive), 'arch': arch, **overrides})


# -- architecture forms ------------------------------------------------------------------------------------------
def _search_output(folder: Path, arch: dict, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'arch.json').write_text(json.dumps({'arch': arch, 'seed': 0, **extra}))
    return folder


def test_every_accepted_form_gives_the_same_architecture(tmp_path):
    nb201 = load_architecture(NB201).arch
    darts = arch_from_genotype(GENOTYPE)
    folder = _search_output(tmp_path / 'search', nb201, nb201_string=NB201)
    trial_result = tmp_path / 'final.json'
    trial_result.write_text(json.dumps({'default': 93.1, 'arch': NB201}))
    text_file = tmp_path / 'cell.txt'
    text_file.write_text(NB201 + '\n')
    genotype_file = tmp_path / 'genotype.json'
    genotype_file.write_text(json.dumps(GENOTYPE))
    darts_repr = ('Genotype(normal=%r, normal_concat=range(2, 6), reduce=%r, reduce_concat=range(2, 6))'
                  % ([tuple(p) for p in GENOTYPE['normal']], [tuple(p) for p in GENOTYPE['reduce']]))
    hub = {f'cell/{label[7]}_{label[5]}': op.replace('nor_', '') for label, op in nb201.items()}  # NNI hub labels
    for spec in (folder, folder / 'arch.json', trial_result, text_file, NB201, json.dumps(hub)):
        loaded = load_architecture(str(spec))
        assert (loaded.space, loaded.arch, loaded.to_string()) == ('nasbench201', nb201, NB201), spec
    darts_search = _search_output(tmp_path / 'darts_search', darts, genotype=GENOTYPE)
    for spec in (darts_search, genotype_file, json.dumps(GENOTYPE), darts_repr):
        loaded = load_architecture(str(spec), 'darts')
        assert (loaded.space, loaded.arch) == ('darts', darts), spec
        assert json.loads(loaded.to_string())['normal'] == [list(p) for p in GENOTYPE['normal']]


@pytest.mark.parametrize('spec, space, error, needle', [
    ('runs/missing/arch.json', None, FileNotFoundError, 'is not an existing file or folder'),
    (NB201, 'darts', ValueError, 'is a NAS-Bench-201 architecture, but the space is \'darts\''),
    (json.dumps(GENOTYPE), 'nasbench201', ValueError, 'is a DARTS architecture, but the space is \'nasbench201\''),
    ('{"cell/1_0": "sep_conv_3x3"}', None, ValueError, 'ops [\'sep_conv_3x3\'] of the DARTS space'),
    ('{"normal/op_2_0": "nor_conv_3x3"}', None, ValueError, 'of the NAS-Bench-201 space'),
    ('{"normal/input_2_0": [0]}', None, ValueError, "NNI's hub DARTS space"),
    ('{"layer1": "conv"}', None, ValueError, 'of neither the NAS-Bench-201 space'),
    ('|nor_conv_3x3~0|+|bogus~0|', None, ValueError, 'Malformed NAS-Bench-201 string'),
    ('Genotype(normal=[("sep_conv_3x3", 0)])', None, ValueError, 'must hold 8 (op, input) pairs'),
])
def test_bad_architectures_are_refused_with_the_reason(spec, space, error, needle):
    with pytest.raises(error) as info:
        load_architecture(spec, space)
    assert needle in str(info.value)


def test_bad_architecture_files(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='folder without arch.json'):
        load_architecture(str(tmp_path / 'empty'))
    broken = _search_output(tmp_path / 'broken', {})
    (broken / 'arch.json').write_text('{"arch": {"cell/1_0": ')
    with pytest.raises(ValueError, match=r'arch.json is not valid JSON'):
        load_architecture(str(broken))
    three_inputs = arch_from_genotype(GENOTYPE)
    three_inputs.update({f'normal/op_3_{src}': 'sep_conv_3x3' for src in range(3)})  # node 3 with three inputs
    (tmp_path / 'three.json').write_text(json.dumps({'arch': three_inputs}))
    with pytest.raises(ValueError, match='exactly two non-none inputs per node'):
        load_architecture(str(tmp_path / 'three.json'))


# -- configuration -----------------------------------------------------------------------------------------------
def test_presets_layers_and_inferred_space():
    nb = resolve_retrain_config({'arch': NB201})
    assert (nb.space, nb.preset, nb.epochs, nb.batch_size, nb.learning_rate, nb.channels, nb.cells_per_stage,
            nb.nesterov, nb.weight_decay) == ('nasbench201', 'nb201', 200, 256, 0.1, 16, 5, True, 5e-4)
    darts = resolve_retrain_config({'arch': json.dumps(GENOTYPE)})
    assert (darts.preset, darts.channels, darts.num_cells, darts.epochs, darts.batch_size, darts.cutout,
            darts.auxiliary_weight, darts.drop_path, darts.learning_rate, darts.weight_decay, darts.grad_clip) == \
        ('darts', 36, 20, 600, 96, 16, 0.4, 0.2, 0.025, 3e-4, 5.0)
    # preset < --set flags < NNI parameters; the preset itself may come from any layer
    layered = resolve_retrain_config({'arch': NB201, 'preset': 'cpu', 'epochs': 4, 'seed': 1}, {'seed': 7})
    assert (layered.preset, layered.epochs, layered.seed, layered.channels) == ('cpu', 4, 7, 8)
    assert resolve_retrain_config({'arch': NB201, 'preset': 'darts'}).auxiliary_weight == 0  # no head in NB201
    assert PRESETS['cpu']['darts']['auxiliary_weight'] == 0.4 and PRESETS['cpu']['darts']['num_cells'] == 5


@pytest.mark.parametrize('layer, needle', [
    ({'epochz': 3}, "Unknown retrain key 'epochz'. Did you mean 'epochs'?"),
    ({'preset': 'fast'}, "Unknown preset 'fast'; expected one of nb201, darts, cpu"),
    ({'data': 'noise'}, 'noise has no labels'),
    ({'auxiliary_weight': 0.4}, 'the NAS-Bench-201 network has neither'),
    ({'val_fraction': 1.0}, 'must lie in [0, 1)'),
    ({'epochs': 0}, 'epochs must be a positive integer'),
    ({'data': 'imagefolder'}, 'needs data_root'),
    ({'arch': None}, 'No architecture to retrain'),
])
def test_bad_configuration_is_refused(layer, needle):
    with pytest.raises(ValueError) as info:
        resolve_retrain_config({'arch': NB201, **layer})
    assert needle in str(info.value)


def test_set_flags_keep_architecture_strings_verbatim():
    flags = parse_retrain_set_flags([f'arch={NB201}', 'epochs=3', 'learning_rate=5e-2', 'data_root=null'])
    assert flags == {'arch': NB201, 'epochs': 3, 'learning_rate': 0.05, 'data_root': None}


# -- augmentation and networks -----------------------------------------------------------------------------------
def test_batch_augment_crops_flips_and_cuts_exactly():
    image = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    crop = BatchAugment(padding=2, seed=0, mean=(0.5,), std=(0.25,))
    out = crop.crop(image)
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2), value=-2.0)  # black = (0 - 0.5) / 0.25
    for n in range(2):
        windows = [padded[n, :, y:y + 6, x:x + 6] for y in range(5) for x in range(5)]
        assert any(torch.equal(out[n], w) for w in windows)
    flips = BatchAugment(padding=0, seed=1).flip(torch.arange(4.).expand(1000, 1, 1, 4))
    mirrored = (flips[:, 0, 0, 0] == 3).float().mean().item()
    assert 0.45 < mirrored < 0.55 and set(flips[:, 0, 0, 0].tolist()) == {0.0, 3.0}
    cut = BatchAugment(padding=0, cutout=4, seed=2).cut(torch.ones(500, 1, 32, 32))
    zeros = (cut == 0).sum(dim=(1, 2, 3))
    assert zeros.max() == 16 and zeros.min() >= 4  # a 4x4 square, clipped at the border
    batch = torch.randn(8, 3, 32, 32)
    same, other = (BatchAugment(4, 16, seed=s)(batch) for s in (5, 6))
    assert torch.equal(same, BatchAugment(4, 16, seed=5)(batch)) and not torch.equal(same, other)


def test_darts_network_auxiliary_head_drop_path_and_cost():
    config = resolve_retrain_config({'arch': json.dumps(GENOTYPE), 'preset': 'cpu', 'channels': 4, 'num_cells': 3})
    network, cost = build_network(config, arch_from_genotype(GENOTYPE), num_classes=10)
    assert isinstance(network, DartsRetrainNetwork) and network.auxiliary is not None
    assert cost['params'] == network.inference_parameters() < sum(p.numel() for p in network.parameters())
    assert cost['flops'] > 0
    x = torch.randn(4, 3, 32, 32)
    logits, aux = network.train()(x)
    assert logits.shape == aux.shape == (4, 10)
    network.set_drop_path(0.0)
    torch.manual_seed(0)
    first = network(x)[0]
    network.set_drop_path(0.6)
    assert not torch.allclose(first, network(x)[0])
    network.eval()
    assert torch.equal(network(x), network(x))  # no drop-path and no aux output in evaluation
    with pytest.raises(ValueError, match=r'\[0, 1\)'):
        network.set_drop_path(1.0)


def test_nasbench201_network_cost_matches_its_parameters():
    config = resolve_retrain_config({'arch': NB201, 'preset': 'cpu', 'channels': 4})
    network, cost = build_network(config, load_architecture(NB201).arch, num_classes=10)
    assert cost['params'] == sum(p.numel() for p in network.parameters())
    pools, pool_cost = build_network(config, load_architecture(POOLS).arch, num_classes=10)
    assert pool_cost['params'] < cost['params'] and pool_cost['flops'] < cost['flops']


def test_nasbench201_paper_network_has_the_published_size():
    """The table-best cell at C=16, N=5 (NAS-Bench-201 reports 1.07M parameters for it)."""
    config = resolve_retrain_config({'arch': NB201})
    _, cost = build_network(config, load_architecture(NB201).arch, num_classes=10)
    assert cost['params'] == 1_073_466 and 150e6 < cost['flops'] < 160e6


@pytest.mark.slow
def test_darts_paper_network_has_the_published_size():
    """DARTS's own cell at 36 channels x 20 cells: 3.3M parameters in the DARTS paper (auxiliary head excluded)."""
    darts_v2 = load_experiment_config(REPO / 'experiment_configs' / 'retrain_darts.yml').search_space['arch']['_value'][0]
    config = resolve_retrain_config({'arch': darts_v2})
    network, cost = build_network(config, load_architecture(darts_v2).arch, num_classes=10)
    assert cost['params'] == network.inference_parameters() == 3_349_342
    assert 500e6 < cost['flops'] < 600e6


# -- training ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def nb201_run(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp('nb201')
    reports: list[dict] = []
    result = run_retrain(tiny(archive, NB201), out, reporter=reports.append)
    return result, reports, out


def test_nasbench201_retraining_learns_and_reports_every_epoch(nb201_run):
    result, reports, _ = nb201_run
    assert [r['epoch'] for r in reports] == list(range(1, TINY['epochs'] + 1))
    assert reports[-1]['train_loss'] < reports[0]['train_loss'] - 0.05, [r['train_loss'] for r in reports]
    assert all(r['default'] == r['val_acc'] for r in reports)
    assert [round(r['lr'], 6) for r in reports[:2]] == [0.1, round(0.05 * (1 + 0.809017), 6)]  # cosine per epoch
    assert result['default'] == result['test_acc'] and 0 <= result['test_acc'] <= 100
    assert result['val_acc'] == reports[-1]['val_acc'] and result['epochs'] == TINY['epochs']
    assert result['arch'] == NB201 and result['table_acc'] == pytest.approx(94.37, abs=0.01)
    assert result['params'] > 0 and result['flops'] > 0


def test_artifacts_restore_the_trained_network(nb201_run, archive):
    result, reports, out = nb201_run
    assert json.loads((out / 'metrics.json').read_text()) == reports
    saved = json.loads((out / 'result.json').read_text())
    assert saved['test_acc'] == result['test_acc'] and saved['arch_dict'] == load_architecture(NB201).arch
    assert json.loads((out / 'config.json').read_text())['epochs'] == TINY['epochs']
    checkpoint = torch.load(out / 'model_final.pt', weights_only=True)
    config = tiny(archive, NB201)
    network, _ = build_network(config, checkpoint['arch'], checkpoint['num_classes'])
    network.load_state_dict(checkpoint['state_dict'])
    assert checkpoint['space'] == 'nasbench201'


class _KillAtEpoch(pl.Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError('killed')


def test_a_killed_retraining_resumes_to_the_same_result(archive, tmp_path):
    config = dict(num_images=96, epochs=3, val_fraction=0.25)
    full = run_retrain(tiny(archive, NB201, **config), tmp_path / 'full')
    with pytest.raises(RuntimeError, match='killed'):
        run_retrain(tiny(archive, NB201, **config), tmp_path / 'killed', extra_callbacks=[_KillAtEpoch(2)])
    assert sorted(p.name for p in (tmp_path / 'killed' / 'checkpoints').glob('*.ckpt')) == \
        ['search_epoch0001.ckpt', 'search_epoch0002.ckpt']
    resumed = run_retrain(tiny(archive, NB201, **config), tmp_path / 'killed')
    for key in ('test_acc', 'test_loss', 'val_acc', 'train_loss', 'epochs'):
        assert resumed[key] == full[key], key
    history = json.loads((tmp_path / 'killed' / 'metrics.json').read_text())
    assert [h['train_loss'] for h in history] == [h['train_loss'] for h in json.loads(
        (tmp_path / 'full' / 'metrics.json').read_text())]
    with pytest.raises(ValueError, match=r'other settings \(learning_rate: 0.1 -> 0.2\).*--resume false'):
        run_retrain(tiny(archive, NB201, **config, learning_rate=0.2), tmp_path / 'killed')
    run_retrain(tiny(archive, NB201, **{**config, 'epochs': 1}, resume=False), tmp_path / 'killed')
    assert len(json.loads((tmp_path / 'killed' / 'metrics.json').read_text())) == 1


def test_darts_retraining_with_auxiliary_head_and_drop_path(archive, tmp_path):
    reports: list[dict] = []
    config = tiny(archive, json.dumps(GENOTYPE), num_cells=3, epochs=4, cutout=8)
    assert (config.auxiliary_weight, config.drop_path) == (0.4, 0.2)
    result = run_retrain(config, tmp_path, reporter=reports.append)
    assert [r['drop_path'] for r in reports] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    assert reports[-1]['train_loss'] < reports[0]['train_loss'], [r['train_loss'] for r in reports]
    assert result['space'] == 'darts' and json.loads(result['arch'])['reduce'] == [list(p) for p in GENOTYPE['reduce']]
    assert 'table_acc' not in result


# -- trial mode and command line ---------------------------------------------------------------------------------
@pytest.fixture
def fake_nni(monkeypatch, tmp_path):
    calls: dict = {'intermediate': [], 'final': [], 'params': {}}
    monkeypatch.setattr(nni, 'get_next_parameter', lambda: calls['params'])
    monkeypatch.setattr(nni, 'report_intermediate_result', calls['intermediate'].append)
    monkeypatch.setattr(nni, 'report_final_result', calls['final'].append)
    monkeypatch.setenv('NNI_OUTPUT_DIR', str(tmp_path / 'trial'))
    return calls


def _trial_flags(archive: Path, **extra) -> list[str]:
    flags = {**TINY, 'data_root': str(archive), 'epochs': 2, 'num_images': 96, **extra}
    return [item for key, value in flags.items() for item in ('--set', f'{key}={value}')]


def test_trial_merges_nni_parameters_over_set_flags_and_reports(fake_nni, archive, tmp_path):
    fake_nni['params'] = {'arch': POOLS, 'seed': 3}
    assert retrain.main(_trial_flags(archive, arch=NB201, seed=1)) == 0
    intermediate, (final,) = fake_nni['intermediate'], fake_nni['final']
    assert len(intermediate) == 2 and all(m['default'] == m['val_acc'] for m in intermediate)
    assert all(isinstance(v, (int, float)) for m in intermediate for v in m.values())
    assert final['default'] == final['test_acc'] and final['arch'] == POOLS and final['seed'] == 3
    assert {'val_acc', 'params', 'flops', 'table_acc', 'data', 'wall_time'} <= set(final)
    config = json.loads((tmp_path / 'trial' / 'config.json').read_text())
    assert (config['arch'], config['seed'], config['output_dir']) == (POOLS, 3, str(tmp_path / 'trial'))
    assert (tmp_path / 'trial' / 'model_final.pt').is_file()


@pytest.mark.parametrize('extra, needle', [
    ({'epochz': 1}, "Unknown retrain key 'epochz'"),
    ({'arch': 'runs/nowhere/arch.json'}, 'is not an existing file or folder'),
    ({'arch': json.dumps(GENOTYPE).replace(' ', ''), 'space': 'nasbench201'}, 'is a DARTS architecture'),
])
def test_trial_with_bad_input_fails_with_one_message_before_training(fake_nni, archive, tmp_path, capsys, extra,
                                                                     needle):
    assert retrain.main(_trial_flags(archive, **{'arch': NB201, **extra})) == 2
    out, err = capsys.readouterr()
    assert needle in out.strip().splitlines()[-1] and needle in err.strip().splitlines()[-1]
    assert out.strip().splitlines()[-1].startswith('nni-labelfree retrain trial failed:')
    assert not fake_nni['intermediate'] and not fake_nni['final'] and not (tmp_path / 'trial').exists()


def test_command_line_retrain(archive, tmp_path, capsys):
    out = tmp_path / 'cli'
    argv = ['retrain', '--arch', NB201, '--preset', 'cpu', '--data', 'imagefolder', '--data-root', str(archive),
            '--set', 'num_images=96', '--set', 'test_images=64', '--epochs', '1', '--channels', '4',
            '--num-threads', '1', '--val-fraction', '0', '--output', str(out)]
    assert cli.main(argv) == 0
    assert 'test_acc' in capsys.readouterr().out
    result = json.loads((out / 'result.json').read_text())  # no validation split: per epoch, training accuracy
    assert 'val_acc' not in result and json.loads((out / 'metrics.json').read_text())[0]['default'] == result['train_acc']
    assert cli.main(['retrain', '--arch', NB201, '--space', 'darts', '--output', str(tmp_path / 'x')]) == 2
    assert "is a NAS-Bench-201 architecture, but the space is 'darts'" in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()


# -- shipped nnictl configs --------------------------------------------------------------------------------------
RETRAIN_CONFIGS = sorted((REPO / 'experiment_configs').glob('retrain_*.yml'))


def test_the_retrain_configs_are_shipped():
    assert {p.name for p in RETRAIN_CONFIGS} == {'retrain_nasbench201.yml', 'retrain_darts.yml', 'retrain_cpu.yml'}


@pytest.mark.parametrize('path', RETRAIN_CONFIGS, ids=lambda p: p.name)
def test_retrain_config_is_valid_and_every_trial_resolves(path, monkeypatch):
    from nni.experiment.config import utils
    utils.unset_base_path()
    config = load_experiment_config(path)  # NNI's own schema validation
    tokens = shlex.split(config.trial_command)
    assert tokens[:3] == RETRAIN_PREFIX and Path(config.canonical_copy().trial_code_directory).resolve() == REPO
    flags = parse_retrain_set_flags([tokens[i + 1] for i in range(3, len(tokens), 2) if tokens[i] == '--set'])
    assert len(flags) * 2 == len(tokens) - 3, 'only --set key=value pairs follow the module'
    space = config.search_space
    assert not set(flags) & set(space), 'a tuner-chosen key fixed by --set would be overridden silently'
    monkeypatch.chdir(REPO)  # trials run in trialCodeDirectory: relative arch paths resolve from there
    for arch in space['arch']['_value']:
        for seed in space['seed']['_value']:
            resolved = resolve_retrain_config(flags, {'arch': arch, 'seed': seed})
            assert resolved.preset == flags['preset'] and resolved.seed == seed
    gpu = config.trial_gpu_number
    assert gpu in (None, 0) or config.training_service.max_trial_number_per_gpu >= 2  # NNI 3.0 scheduler workaround


# -- a real NNI experiment on localhost --------------------------------------------------------------------------
def _rest(port: int, endpoint: str):
    import urllib.request
    with urllib.request.urlopen(f'http://localhost:{port}/api/v1/nni/{endpoint}', timeout=30) as response:
        return json.load(response)


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _run_nni_experiment(config_path: Path, timeout: float = 240) -> dict:
    """Start NNI's manager on the config, wait for every trial to end, capture the REST API, always stop."""
    import atexit
    import time
    from nni.experiment import Experiment
    experiment = Experiment(load_experiment_config(config_path))
    port = _free_port()
    experiment.start(port)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            jobs = _rest(port, 'trial-jobs')
            if len(jobs) == 2 and all(j['status'] in ('SUCCEEDED', 'FAILED', 'USER_CANCELED') for j in jobs):
                break
            time.sleep(1)
        return {'jobs': _rest(port, 'trial-jobs'), 'metrics': _rest(port, 'metric-data')}
    finally:
        experiment.stop()
        atexit.unregister(experiment.stop)


@pytest.fixture(scope='module')
def nnictl_run(archive, tmp_path_factory):
    import os
    import sys
    import yaml
    directory = tmp_path_factory.mktemp('nnictl')
    flags = {**TINY, 'data_root': str(archive), 'epochs': 2, 'num_images': 96}
    config = {
        'experimentName': 'nni-labelfree retrain test',
        'searchSpace': {'arch': {'_type': 'choice', '_value': [NB201, 'runs/nowhere/arch.json']}},
        'trialCommand': ' '.join([*RETRAIN_PREFIX, *(f'--set {k}={v}' for k, v in flags.items())]),
        'trialCodeDirectory': str(REPO), 'experimentWorkingDirectory': str(directory / 'experiments'),
        'trialConcurrency': 2, 'maxTrialNumber': 2, 'maxExperimentDuration': '4m',
        'tuner': {'name': 'GridSearch'}, 'trainingService': {'platform': 'local', 'useActiveGpu': False}}
    path = directory / 'retrain.yml'
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:  # nnictl runs trials with the first python3 on PATH
        patch.setenv('PATH', f'{Path(sys.executable).parent}{os.pathsep}{os.environ.get("PATH", "")}')
        return _run_nni_experiment(path)


def _by_status(run: dict) -> dict:
    """Trials keyed by status. (NNI 3.0's REST ``hyperParameters`` of a job need not be the parameters the trial
    received, so which trial ran what is read from the trial's own outputs.)"""
    out = {}
    for job in run['jobs']:
        metrics = [m for m in run['metrics'] if m['trialJobId'] == job['trialJobId']]
        decoded = {kind: [json.loads(json.loads(m['data'])) for m in sorted(metrics, key=lambda m: m['sequence'])
                          if m['type'] == kind] for kind in ('PERIODICAL', 'FINAL')}
        out.setdefault(job['status'], []).append((job, decoded))
    return out


@pytest.mark.slow
def test_nnictl_retrain_trial_succeeds_and_reports_through_the_rest_api(nnictl_run):
    assert sorted(_by_status(nnictl_run)) == ['FAILED', 'SUCCEEDED'], nnictl_run['jobs']
    ((job, metrics),) = _by_status(nnictl_run)['SUCCEEDED']
    assert [m['epoch'] for m in metrics['PERIODICAL']] == [1, 2]
    assert all(m['default'] == m['val_acc'] for m in metrics['PERIODICAL'])
    (final,) = metrics['FINAL']
    assert final['default'] == final['test_acc'] and final['arch'] == NB201
    trial_dir = Path(job['logPath'])
    assert json.loads((trial_dir / 'result.json').read_text())['test_acc'] == final['test_acc']
    assert json.loads((trial_dir / 'config.json').read_text())['arch'] == NB201
    assert (trial_dir / 'model_final.pt').is_file() and (trial_dir / 'metrics.json').is_file()


@pytest.mark.slow
def test_nnictl_retrain_trial_with_a_missing_architecture_fails_with_the_reason(nnictl_run):
    ((job, metrics),) = _by_status(nnictl_run)['FAILED']
    assert not metrics['PERIODICAL'] and not metrics['FINAL']
    for log, prefix in (('trial.log', ''), ('trial.stderr', 'nni-labelfree')):  # trial.log: NNI adds a time stamp
        lines = [line for line in (Path(job['logPath']) / log).read_text().splitlines() if line.strip()]
        assert lines[-1].startswith(prefix) and 'nni-labelfree retrain trial failed: Architecture' in lines[-1]
        assert 'is not an existing file or folder' in lines[-1]
