"""UnrealNAS: DARTS/SGAS on RLRD, RLGD and RLRN; valid exports on small spaces, falling loss, paper defaults, bad input."""
import pytest
import torch
from pytorch_lightning import Callback
from torch.utils.data import TensorDataset

from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment

from nni_labelfree.benchmarks.nasbench201 import NB201_LABELS, NB201_OPS
from nni_labelfree.search_spaces import DartsSpace, NasBench201Space
from nni_labelfree.search_spaces.darts import darts_sample_is_valid
from nni_labelfree.strategies import UnrealNAS

KINDS = ('rlrd', 'rlgd', 'rlrn')


def _images(n=32, size=16, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, channels, size, size, generator=g) * 2 - 1,
                         torch.randint(0, 10, (n,), generator=g))


def _evaluator(epochs, dataset=None, batch=16, num_classes=10, **kwargs):
    loader = DataLoader(dataset or _images(), batch_size=batch)
    return Classification(train_dataloaders=loader, val_dataloaders=loader, num_classes=num_classes,
                          learning_rate=0.01, max_epochs=epochs, enable_progress_bar=False, logger=False,
                          enable_checkpointing=False, enable_model_summary=False, **kwargs)


def _nb201(num_classes=10):
    return NasBench201Space(channels=4, cells_per_stage=1, num_classes=num_classes)


class BatchLosses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs['loss'] if isinstance(outputs, dict) else outputs))


@pytest.mark.parametrize('kind', KINDS)
def test_sgas_on_each_data_kind_exports_a_valid_nb201_cell(kind):
    torch.manual_seed(0)
    evaluator_data = _images()
    strategy = UnrealNAS(kind, 'sgas', decision_warmup=0, decision_freq=1)
    experiment = NasExperiment(_nb201(), _evaluator(7, evaluator_data), strategy)
    experiment.run()
    [arch] = experiment.export_top_models(formatter='dict')
    assert set(arch) == set(NB201_LABELS) and set(arch.values()) <= set(NB201_OPS) - {'none'}
    assert strategy.oneshot_module.decisions.finished
    train = strategy.oneshot_module.trainer.train_dataloader
    images, labels = next(iter(train['train'] if isinstance(train, dict) else train.iterables['train']))
    if kind == 'rlrd':  # the evaluator's images, other labels
        assert any(torch.equal(images[0], x) for x, _ in evaluator_data)
    else:
        assert not any(torch.equal(images[0], x) for x, _ in evaluator_data)


@pytest.mark.parametrize('kind', KINDS)
def test_darts_on_each_data_kind_exports_a_valid_darts_genotype(kind):
    torch.manual_seed(0)
    strategy = UnrealNAS(kind, 'darts', warmup_epochs=0)
    experiment = NasExperiment(DartsSpace(width=4, num_cells=3, num_classes=8),
                               _evaluator(1, _images(8), batch=8, num_classes=8), strategy)
    experiment.run()
    [arch] = experiment.export_top_models(formatter='dict')
    assert darts_sample_is_valid(arch)
    assert 'skip_connections' in strategy.oneshot_module.trainer.callback_metrics


@pytest.mark.parametrize('kind', ['rlrn', pytest.param('rlgd', marks=pytest.mark.slow),
                                  pytest.param('rlrd', marks=pytest.mark.slow)])
def test_random_label_loss_falls(kind):
    """12 epochs of DARTS (5 of them warm-up) on 32 images with 10 random classes: the loss must fall well below
    ln 10, i.e. the supernet memorises the random labels."""
    torch.manual_seed(0)
    losses = BatchLosses()
    NasExperiment(_nb201(), _evaluator(12, callbacks=[losses]), UnrealNAS(kind, 'darts', seed=1)).run()
    first, last = sum(losses.losses[:4]) / 4, sum(losses.losses[-4:]) / 4
    assert first > 2.0 and last < 0.6 * first, (first, last)


def test_paper_defaults_and_flipped_validation_images():
    strategy = UnrealNAS('rlrn', 'darts')
    assert strategy.warmup_epochs == 5 and UnrealNAS('rlrn', 'sgas').warmup_epochs == 0
    supernet = strategy.mutate_model(_nb201())
    assert all(torch.count_nonzero(alpha) == 0 for alpha in strategy._arch_parameters.values())
    lightning = strategy.mutate_evaluator(_evaluator(5, weight_decay=5e-4))
    lightning.module.set_model(supernet)
    weights, alphas = lightning.module.configure_optimizers()
    assert all(group['weight_decay'] == 0 for group in weights.param_groups)
    assert alphas.defaults['betas'] == (0.5, 0.99) and alphas.defaults['weight_decay'] == 0
    loaders = lightning.train_dataloaders
    train, val = loaders['train'].dataset, loaders['val'].dataset
    assert len(train) == len(val) == 32
    for i in (0, 7):
        assert torch.equal(val[i][0], train[i][0].flip(-1)) and val[i][1] == train[i][1]


def test_image_shape_comes_from_the_evaluator_or_is_given():
    strategy = UnrealNAS('rlgd', 'darts', image_shape=(3, 8, 8), num_images=24)
    strategy.mutate_model(_nb201())
    lightning = strategy.mutate_evaluator(_evaluator(5))
    train = lightning.train_dataloaders['train'].dataset
    assert len(train) == 24 and train[0][0].shape == (3, 8, 8)
    strategy = UnrealNAS('rlrn', 'darts')
    strategy.mutate_model(_nb201())
    assert strategy.mutate_evaluator(_evaluator(5)).train_dataloaders['train'].dataset[0][0].shape == (3, 16, 16)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match='Unknown UnrealNAS data'):
        UnrealNAS('cifar')
    with pytest.raises(ValueError, match='Unknown UnrealNAS algorithm'):
        UnrealNAS('rlgd', 'enas')
    with pytest.raises(ValueError, match='image_shape'):
        UnrealNAS('rlgd', image_shape=(3, 16, 8))
    with pytest.raises(ValueError, match='num_classes=1000'):
        UnrealNAS('rlrd', num_classes=1000).mutate_model(_nb201())
    strategy = UnrealNAS('rlgd', image_shape=(1, 16, 16))
    strategy.mutate_model(_nb201())
    with pytest.raises(ValueError, match='in_channels=1'):
        strategy.mutate_evaluator(_evaluator(5))
    strategy = UnrealNAS('rlrn')
    strategy.mutate_model(_nb201(num_classes=20))
    with pytest.raises(ValueError, match='num_classes=20'):
        strategy.mutate_evaluator(_evaluator(5))
    strategy = UnrealNAS('rlrn')
    strategy.mutate_model(_nb201(num_classes=64))
    with pytest.raises(ValueError, match='larger than the number of images'):
        strategy.mutate_evaluator(_evaluator(5, num_classes=64))
    strategy = UnrealNAS('rlrd', 'sgas')  # SGAS's own schedule: 6 NB201 decisions need 35 epochs
    strategy.mutate_model(_nb201())
    with pytest.raises(ValueError, match='max_epochs'):
        strategy.mutate_evaluator(_evaluator(20))
