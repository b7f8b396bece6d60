"""RLNAS as an NNI strategy: NasExperiment end to end, custom spaces, determinism, constraints, bad input."""
import numpy as np
import pytest
import torch
from torch import nn
from pytorch_lightning import Callback
from torch.utils.data import TensorDataset

from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace

from nni_labelfree.benchmarks.nasbench201 import NB201_LABELS, NB201_OPS, arch_to_string
from nni_labelfree.data import RandomLabelDataset
from nni_labelfree.search_spaces import NasBench201Space
from nni_labelfree.selection import ProfilerConstraint
from nni_labelfree.strategies import RLNAS


def _data(n=64, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, classes, (n,), generator=g))


def _evaluator(dataset, epochs=2, classes=10):
    return Classification(train_dataloaders=DataLoader(dataset, batch_size=32, shuffle=True),
                          val_dataloaders=DataLoader(dataset, batch_size=32), num_classes=classes,
                          learning_rate=0.01, max_epochs=epochs, enable_progress_bar=False, logger=False,
                          enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0)


def _run(space, strategy, dataset=None, epochs=2, classes=10):
    torch.manual_seed(0)
    experiment = NasExperiment(space, _evaluator(dataset or _data(classes=classes), epochs, classes), strategy)
    experiment.run()
    return experiment


@pytest.fixture(scope='module')
def nb201_run():
    strategy = RLNAS(seed=0)
    experiment = _run(NasBench201Space(channels=8, cells_per_stage=1), strategy)
    return experiment, strategy


def test_nas_experiment_exports_valid_ranked_architectures(nb201_run):
    experiment, strategy = nb201_run
    top = experiment.export_top_models(top_k=3, formatter='dict')
    assert len(top) == 3 and len({arch_to_string(a) for a in top}) == 3
    for arch in top:
        assert set(arch) == set(NB201_LABELS) and set(arch.values()) <= set(NB201_OPS)
    ranked = strategy.oneshot_module.search_result
    assert [a for a, _ in ranked[:3]] == top
    angles = [angle for _, angle in ranked]
    assert angles == sorted(angles, reverse=True) and angles[0] > 0


def test_trained_angles_differ_from_initialisation(nb201_run):
    _, strategy = nb201_run
    module = strategy.oneshot_module
    scorer = module.angle_scorer()
    angles = scorer.angles(scorer.all_encodings())
    assert (angles > 1e-4).sum() > 15000  # training rotated the weights of (nearly) every connected cell
    assert len(np.unique(np.round(angles, 9))) > 100  # and the cells are ranked, not tied


def test_labels_are_replaced_by_random_labels(nb201_run):
    _, strategy = nb201_run
    module = strategy.oneshot_module
    datasets = module.label_datasets
    assert datasets and all(isinstance(d, RandomLabelDataset) for d in datasets)
    true = _data().tensors[1]
    assert (datasets[0].labels == true).float().mean() < 0.4
    assert isinstance(module.trainer.train_dataloader.dataset, RandomLabelDataset)


class ChainSpace(ModelSpace):
    """Not NAS-Bench-201: a chain with LayerChoices, a parameter-free candidate and an InputChoice."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block1 = LayerChoice({'conv3': nn.Conv2d(8, 8, 3, padding=1), 'conv5': nn.Conv2d(8, 8, 5, padding=2),
                                   'pool': nn.AvgPool2d(3, 1, 1)}, label='block1')
        self.block2 = LayerChoice({'conv1': nn.Conv2d(8, 8, 1), 'skip': nn.Identity()}, label='block2')
        self.shortcut = InputChoice(2, 1, label='shortcut')
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.block2(torch.relu(self.block1(x)))
        return self.classifier(self.shortcut([x, y]).mean((2, 3)))


def test_rlnas_on_a_custom_model_space():
    strategy = RLNAS(seed=3)
    experiment = _run(ChainSpace(), strategy, dataset=_data(classes=5), classes=5)
    [arch] = experiment.export_top_models(formatter='dict')
    assert set(arch) == {'block1', 'block2', 'shortcut'}
    assert arch['block1'] in ('conv3', 'conv5', 'pool') and arch['block2'] in ('conv1', 'skip')
    ranked = strategy.oneshot_module.search_result
    assert len(ranked) == 3 * 2 * 2 and ranked[0][1] > 0


def test_same_seed_same_angles_and_architecture():
    runs = []
    for _ in range(2):
        strategy = RLNAS(seed=7)
        torch.manual_seed(7)  # the space's initial weights
        _run(NasBench201Space(channels=4, cells_per_stage=1), strategy, epochs=1)
        scorer = strategy.oneshot_module.angle_scorer()
        runs.append((scorer.angles(scorer.all_encodings()), strategy.oneshot_module.export()))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_evolution_respects_a_profiler_constraint():
    space = NasBench201Space(channels=8, cells_per_stage=1)
    constraint = ProfilerConstraint(space, torch.randn(1, 3, 32, 32), max_params=60_000)
    strategy = RLNAS(seed=0, constraint=constraint, evolution=dict(population_size=20, top_k=5, num_mutation=10,
                                                                   num_crossover=10, generations=3))
    [best] = _run(space, strategy, epochs=1).export_top_models(formatter='dict')
    ranked = strategy.oneshot_module.search_result
    assert ranked[0][0] == best
    assert ranked and all(constraint(arch) for arch, _ in ranked)
    assert constraint.value(ranked[0][0])['params'] <= 60_000


class NoChoiceSpace(ModelSpace):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


class NoLinearSpace(ModelSpace):
    def __init__(self):
        super().__init__()
        self.conv = LayerChoice([nn.Conv2d(3, 10, 1), nn.Conv2d(3, 10, 3, padding=1)], label='conv')

    def forward(self, x):
        return self.conv(x).mean((2, 3))


@pytest.mark.parametrize('space, message', [
    (NoChoiceSpace, 'nothing to search'),
    (NoLinearSpace, 'final nn.Linear'),
])
def test_spaces_rlnas_cannot_handle_are_refused(space, message):
    with pytest.raises(ValueError, match=message):
        RLNAS().mutate_model(space())


def test_cell_mean_angle_on_a_space_without_cells_is_refused_before_training():
    with pytest.raises(ValueError, match='ChainSpace has no cell_dags'):
        RLNAS(angle_policy={'edges': 'cell_mean'}).mutate_model(ChainSpace())
    with pytest.raises(ValueError, match='path_aware=False'):
        RLNAS(angle_policy={'edges': 'cell_mean'}, path_aware=False).mutate_model(
            NasBench201Space(channels=4, cells_per_stage=1))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='num_classes=100'):
        RLNAS(num_classes=100).mutate_model(NasBench201Space(channels=4, cells_per_stage=1))
    with pytest.raises(ValueError, match='search='):
        RLNAS(search='random')
    with pytest.raises(ValueError, match='ignores constraints'):
        RLNAS(search='exhaustive', constraint=lambda arch: True)
    strategy = RLNAS()
    strategy.mutate_model(NasBench201Space(channels=4, cells_per_stage=1))
    with pytest.raises(TypeError, match='single torch DataLoader'):
        strategy.train_dataloader(lambda: {'a': 1}, lambda: None)


def test_angle_edges_reaches_rlnas_and_old_configs_resume_with_each_edges_own_weights():
    from nni_labelfree.experiment.config import resolve_config
    from nni_labelfree.experiment.search import build_search, with_keys_added_later
    from nni_labelfree.metrics.angle import AnglePolicy
    parts = build_search(resolve_config({'data': 'noise', 'channels': 4, 'num_images': 16, 'batch_size': 8,
                                         'angle_edges': 'cell_mean'}))
    assert parts.strategy.angle_policy == AnglePolicy(edges='cell_mean')
    # a search saved before the key existed scored each edge's own weights
    assert with_keys_added_later({'strategy': 'rlnas', 'seed': 0})['angle_edges'] is None
    assert with_keys_added_later({'strategy': 'rlnas', 'angle_edges': 'cell_mean'})['angle_edges'] == 'cell_mean'


class _LabelsSeen(Callback):
    """The labels of every training batch, per epoch."""

    def __init__(self):
        self.epochs: dict[int, list] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.epochs.setdefault(trainer.current_epoch, []).append(batch[1].clone())


def test_per_iteration_labels_reach_persistent_worker_processes():
    """A user's loader with persistent workers must not freeze per-iteration labels at epoch 0's."""
    dataset, seen = _data(n=64), _LabelsSeen()
    loader = DataLoader(dataset, batch_size=32, shuffle=False, num_workers=1, persistent_workers=True)
    evaluator = Classification(train_dataloaders=loader, val_dataloaders=DataLoader(dataset, batch_size=32),
                               num_classes=10, learning_rate=0.01, max_epochs=3, enable_progress_bar=False,
                               logger=False, enable_checkpointing=False, enable_model_summary=False,
                               limit_val_batches=0, callbacks=[seen])
    strategy = RLNAS(seed=4, label_mode='uniform_per_iteration')
    torch.manual_seed(0)
    NasExperiment(NasBench201Space(channels=4, cells_per_stage=1), evaluator, strategy).run()
    expected = RandomLabelDataset(dataset, 10, 'uniform_per_iteration', seed=4)
    for epoch in range(3):
        expected.set_epoch(epoch)
        assert torch.equal(torch.cat(seen.epochs[epoch]), expected.labels), epoch  # sequential order: index order
    assert not torch.equal(torch.cat(seen.epochs[0]), torch.cat(seen.epochs[1]))
