"""UnNAS as an NNI strategy: pretext objectives through DARTS on small spaces, export, bad input."""
import pytest
import torch
from pytorch_lightning import Callback
from torch import nn
from torch.utils.data import Subset, TensorDataset

from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.nn.pytorch import LayerChoice, ModelSpace

from nni_labelfree.benchmarks.nasbench201 import NB201_LABELS, NB201_OPS
from nni_labelfree.data import CropFlipDataset, EpochShuffleSampler
from nni_labelfree.heads import PretextNetwork
from nni_labelfree.search_spaces import NasBench201Space
from nni_labelfree.strategies import UnNAS
from nni_labelfree.strategies.unnas import count_skip_connections


def _images(n=64, channels=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Smooth random images (upsampled noise) so that rotation and jigsaw are learnable at all.
    low = torch.rand(n, channels, size // 8, size // 8, generator=g)
    images = nn.functional.interpolate(low, size=(size, size), mode='bilinear', align_corners=False)
    return TensorDataset(images * 2 - 1, torch.randint(0, 10, (n,), generator=g))


def _evaluator(dataset, epochs=1, batch=16, **trainer):
    loader = DataLoader(dataset, batch_size=batch, shuffle=True)
    return Classification(train_dataloaders=loader, val_dataloaders=loader, num_classes=10, learning_rate=0.01,
                          max_epochs=epochs, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                          enable_model_summary=False, **trainer)


def _search(task, space, dataset, **kwargs):
    strategy = UnNAS(task, seed=0, **kwargs)
    experiment = NasExperiment(space, _evaluator(dataset), strategy)
    experiment.run()
    return experiment, strategy


@pytest.mark.parametrize('task', ['rotation', 'jigsaw', 'supervised'])
def test_unnas_exports_a_valid_nb201_cell(task):
    experiment, strategy = _search(task, NasBench201Space(channels=4, cells_per_stage=1), _images())
    [arch] = experiment.export_top_models(formatter='dict')
    assert set(arch) == set(NB201_LABELS) and set(arch.values()) <= set(NB201_OPS)
    module = strategy.oneshot_module
    assert isinstance(module.model, PretextNetwork) and module.model.task == task
    metrics = module.trainer.callback_metrics
    assert 'pretext_loss' in metrics and 'skip_connections' in metrics


def test_colorization_runs_on_a_one_channel_space():
    experiment, _ = _search('colorization', NasBench201Space(channels=4, cells_per_stage=1, in_channels=1),
                            _images(n=32))
    [arch] = experiment.export_top_models(formatter='dict')
    assert set(arch) == set(NB201_LABELS)


def test_rotation_loss_falls_on_cifar_images(shared_data):
    """A few hundred rotation steps on 32 CIFAR-10 JPEG images: the pretext loss must drop well below ln 4."""
    from nni_labelfree.data import image_source
    space = NasBench201Space(channels=8, cells_per_stage=1)
    strategy = UnNAS('rotation', seed=0)
    dataset = image_source('imagefolder', root=shared_data / 'images' / 'cifar10_jpeg.tar.gz', split='train',
                           num_images=32)
    losses = []

    from pytorch_lightning import Callback

    class LossLog(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs['loss'] if isinstance(outputs, dict) else outputs))

    evaluator = _evaluator(dataset, epochs=60, callbacks=[LossLog()])
    NasExperiment(space, evaluator, strategy).run()
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 1.2 and last < 0.6 * first, (first, last)


class RecordWeightImages(Callback):
    """The images of every weight-half batch, per epoch (the 0-degree copies for rotation)."""

    def __init__(self, task):
        self.task, self.images = task, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        images = batch['train'][0]
        self.images.setdefault(trainer.current_epoch, []).append(images[::4] if self.task == 'rotation' else images)


def _weight_images_by_index(task, augment, dataset, epochs=2):
    """Run UnNAS for ``epochs`` and map each weight-half index to the image the network saw, per epoch."""
    recorder = RecordWeightImages(task)
    NasExperiment(NasBench201Space(channels=4, cells_per_stage=1), _evaluator(dataset, epochs=epochs,
                  callbacks=[recorder]), UnNAS(task, seed=0, augment=augment)).run()
    by_epoch = {}
    for epoch, batches in recorder.images.items():
        order = EpochShuffleSampler(len(dataset) // 2, seed=0)  # the weight half's order (strategy seed + 0)
        order.set_epoch(epoch)
        seen = torch.cat(batches)
        by_epoch[epoch] = dict(zip(list(order)[:len(seen)], seen))
    return by_epoch


@pytest.mark.parametrize('task', ['rotation', 'supervised'])
def test_augment_crops_and_flips_the_weight_half_anew_every_epoch(task):
    dataset = _images()
    seen = _weight_images_by_index(task, True, dataset)
    assert sorted(seen) == [0, 1] and len(seen[0]) == 32
    expected = CropFlipDataset(Subset(dataset, list(range(32))), seed=0)  # the weight half, strategy seed + 0
    for epoch in (0, 1):
        expected.set_epoch(epoch)  # the module tells the crops the epoch, so these are that epoch's crops
        assert all(torch.equal(image, expected[i][0]) for i, image in seen[epoch].items()), epoch
    changed = [i for i in seen[0] if not torch.equal(seen[0][i], seen[1][i])]
    assert len(changed) >= 24, len(changed)  # the same image, other crops and flips in epoch 1
    assert sum(not torch.equal(image, dataset[i][0]) for i, image in seen[0].items()) >= 24


def test_augment_false_shows_the_images_as_they_come():
    dataset = _images()
    seen = _weight_images_by_index('rotation', False, dataset)
    for epoch in (0, 1):
        assert len(seen[epoch]) == 32 and all(torch.equal(image, dataset[i][0]) for i, image in seen[epoch].items())
    with pytest.raises(TypeError, match='augment'):
        UnNAS('rotation', augment='yes')


class NoFeatures(ModelSpace):
    def __init__(self):
        super().__init__()
        self.conv = LayerChoice([nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(1, 8, 1)], label='conv')
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match='Unknown UnNAS task'):
        UnNAS('inpainting')
    with pytest.raises(ValueError, match='features'):
        PretextNetwork(NoFeatures(), 'colorization', 313)
    with pytest.raises(ValueError, match='in_channels=1'):
        PretextNetwork(NasBench201Space(channels=4, cells_per_stage=1), 'colorization', 313)
    with pytest.raises(ValueError, match='too few'):
        _search('rotation', NasBench201Space(channels=4, cells_per_stage=1), _images(n=16))


def test_count_skip_connections():
    assert count_skip_connections({'normal/op_2_0': 'skip_connect', 'reduce/op_2_0': 'skip_connect'}) == 1
    assert count_skip_connections({'cell/1_0': 'skip_connect', 'cell/2_0': 'none'}) == 1


def test_cli_unnas_jigsaw_on_darts_writes_a_genotype(tmp_path):
    import json
    from nni_labelfree.experiment.cli import main
    out = tmp_path / 'run'
    code = main(['search', '--strategy', 'unnas', '--task', 'jigsaw', '--space', 'darts', '--channels', '4',
                 '--num-cells', '3', '--num-images', '64', '--batch-size', '16', '--epochs', '2', '--output', str(out)])
    assert code == 0
    result = json.loads((out / 'arch.json').read_text())
    genotype = result['genotype']
    assert len(genotype['normal']) == 8 and len(genotype['reduce']) == 8
    assert all(op != 'none' for op, _ in genotype['normal'] + genotype['reduce'])
    history = json.loads((out / 'metrics.json').read_text())
    assert [m['epoch'] for m in history] == [1, 2] and all('skip_connections' in m for m in history)
    assert result['skip_connections'] == history[-1]['skip_connections']


@pytest.mark.parametrize('flags, message', [
    (['--task', 'inpainting'], 'task'),
    (['--task', 'jigsaw', '--image-size', '8'], 'px'),
    (['--pretext-augment', 'maybe'], 'pretext_augment'),
])
def test_cli_unnas_bad_input(tmp_path, capsys, flags, message):
    from nni_labelfree.experiment.cli import main
    code = main(['search', '--strategy', 'unnas', '--channels', '4', '--num-images', '64', '--epochs', '1',
                 '--output', str(tmp_path / 'x'), *flags])
    assert code == 2
    assert message in capsys.readouterr().err


def test_pretext_augment_reaches_unnas_and_old_unnas_checkpoints_resume_only_without_it(tmp_path):
    from nni_labelfree.experiment.config import resolve_config
    from nni_labelfree.experiment.search import _build_strategy, _check_same_search
    assert resolve_config({'strategy': 'unnas'}).pretext_augment is True
    off = resolve_config({'strategy': 'unnas', 'pretext_augment': False})
    assert _build_strategy(off, None, 64).augment is False
    assert _build_strategy(resolve_config({'strategy': 'unnas'}), None, 64).augment is True
    # A checkpoint written before the key existed: that UnNAS search did not augment.
    saved = off.to_dict()
    del saved['pretext_augment']
    _check_same_search(off, saved, tmp_path / 'x.ckpt')
    with pytest.raises(ValueError, match='pretext_augment'):
        _check_same_search(resolve_config({'strategy': 'unnas'}), saved, tmp_path / 'x.ckpt')
    rlnas = resolve_config({'strategy': 'rlnas'})
    old_rlnas = {k: v for k, v in rlnas.to_dict().items() if k != 'pretext_augment'}
    _check_same_search(rlnas, old_rlnas, tmp_path / 'x.ckpt')  # other strategies ignore the key
