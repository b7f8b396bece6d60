"""Linear-evaluation search (Pi-NAS 3.3): frozen supernet, BN handling, per-candidate accuracy, label-free criterion."""
import math

import pytest
from helpers import quadrant_images
import torch
from torch import nn
from torch.utils.data import DataLoader

from nni.nas.oneshot.pytorch.strategy import RandomOneShot

from nni_labelfree.benchmarks.nasbench201 import NB201_LABELS
from nni_labelfree.search_spaces import NasBench201Space
from nni_labelfree.selection import space_choices
from nni_labelfree.selection.linear_eval import (HeldOutContrastive, LinearEvaluator, batch_statistics,
                                                 recalibrated_bn, select_architectures, uniform_arch_sampler)

ALL_CONV = {label: 'nor_conv_3x3' for label in NB201_LABELS}
ALL_NONE = {label: 'none' for label in NB201_LABELS}
ALL_SKIP = {label: 'skip_connect' for label in NB201_LABELS}


pytestmark = pytest.mark.usefixtures('one_torch_thread')




def _supernet(seed=0):
    torch.manual_seed(seed)
    space = NasBench201Space(channels=4, cells_per_stage=1, num_classes=4)
    RandomOneShot().mutate_model(space)
    return space


def _embed(space):
    return lambda x: space.features(x).mean((2, 3))


def _evaluator(space, steps=60, data=None):
    data = data or quadrant_images()
    train = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(quadrant_images(64, seed=1), batch_size=32)
    draw = uniform_arch_sampler(space_choices(space), seed=0, filter=space.sample_filter)
    return LinearEvaluator(space, _embed(space), train, val, sample_arch=draw, num_classes=4, steps=steps,
                           learning_rate=0.5, bn_batches=2)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_linear_evaluation_leaves_the_supernet_unchanged():
    space = _supernet()
    space.train()
    before = _state(space)
    evaluator = _evaluator(space, steps=10)
    evaluator.fit()
    for arch in (ALL_CONV, ALL_NONE):
        evaluator.accuracy(arch)
    after = space.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and every BN buffer
    assert all(m.training for m in space.modules())  # train/eval modes restored
    assert all(p.grad is None for p in space.parameters())  # never part of the classifier's optimisation


def test_classifier_learns_and_accuracy_separates_architectures():
    space = _supernet()
    evaluator = _evaluator(space, steps=60)
    losses = evaluator.fit()
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    skip, dead = evaluator.accuracy(ALL_SKIP), evaluator(ALL_NONE)
    assert skip > 0.8, skip  # 4 classes, chance 0.25: the untrained skip path keeps the coloured quadrants
    assert dead < 0.45, dead  # every cell outputs zeros: the features cannot separate the classes
    conv = evaluator.accuracy(ALL_CONV)
    assert evaluator.accuracy(ALL_CONV) == conv  # deterministic: recalibration starts from scratch each time


def test_recalibrated_bn_averages_the_batches_and_restores_the_state():
    model = nn.Sequential(nn.BatchNorm2d(2))
    model.train()
    before = _state(model)
    batches = [torch.full((4, 2, 3, 3), 1.0), torch.full((4, 2, 3, 3), 3.0) + torch.randn(4, 2, 3, 3)]
    with recalibrated_bn(model, model, batches):
        norm = model[0]
        assert not norm.training
        expected = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
        assert torch.allclose(norm.running_mean, expected, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model[0].training
    assert model[0].momentum == 0.1


def test_batch_statistics_normalises_each_batch_and_restores_the_state():
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, affine=False))
    model.eval()
    before = _state(model)
    x = torch.randn(8, 2, 4, 4) * 5 + 3
    with batch_statistics(model), torch.no_grad():
        out = model(x)
        assert not model[0].training and model[1].training
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model[1].training


class _Projection(nn.Module):
    def __init__(self, constant: bool):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.constant = constant

    def forward(self, x):
        flat = x.flatten(1) * self.scale
        return torch.ones_like(flat) if self.constant else flat


def test_label_free_criterion_penalises_a_collapsed_network():
    """Consistency alone would rank a constant network first; the held-out contrastive loss ranks it last."""
    views = torch.randn(32, 1, 3, 8, 8, generator=torch.Generator().manual_seed(0)).repeat(1, 2, 1, 1, 1)
    views[:, 1] += 0.01 * torch.randn_like(views[:, 1])  # two nearly identical views per image
    collapsed, distinct = _Projection(True), _Projection(False)
    scores_c = HeldOutContrastive(collapsed, collapsed, views, temperature=0.2).scores({})
    scores_d = HeldOutContrastive(distinct, distinct, views, temperature=0.2).scores({})
    assert scores_c['loss'] == pytest.approx(math.log(32), abs=1e-5) and scores_c['accuracy'] <= 1 / 32 + 1e-9
    assert scores_d['loss'] < 1.0 and scores_d['accuracy'] == 1.0
    assert HeldOutContrastive(distinct, distinct, views)({}) > HeldOutContrastive(collapsed, collapsed, views)({})


def test_select_architectures_exhaustive_and_evolution():
    choices = {'a': [0, 1, 2], 'b': [0, 1]}
    fitness = lambda arch: arch['a'] * 10 + arch['b']  # noqa: E731
    ranked = select_architectures(fitness, choices, exhaustive_limit=6, top_k=3)
    assert ranked == [({'a': 2, 'b': 1}, 21.0), ({'a': 2, 'b': 0}, 20.0), ({'a': 1, 'b': 1}, 11.0)]
    limited = select_architectures(fitness, choices, constraint=lambda arch: arch['a'] < 2, seed=1,
                                   evolution=dict(population_size=4, top_k=2, num_mutation=2, num_crossover=2,
                                                  generations=2))
    assert limited[0] == ({'a': 1, 'b': 1}, 11.0) and all(arch['a'] < 2 for arch, _ in limited)


def test_unlabeled_data_and_bad_settings_are_refused():
    space = _supernet()
    with pytest.raises(ValueError, match='label-free'):
        _evaluator(space, steps=2, data=quadrant_images(64, labels=False)).fit()
    evaluator = _evaluator(space, steps=2)
    with pytest.raises(RuntimeError, match='fit'):
        evaluator.accuracy(ALL_CONV)
    with pytest.raises(ValueError, match='num_classes'):
        LinearEvaluator(space, _embed(space), [], [], sample_arch=dict, num_classes=1)
    with pytest.raises(ValueError, match='views'):
        HeldOutContrastive(space, space, torch.zeros(1, 2, 3, 8, 8))
    draw = uniform_arch_sampler({'a': [0, 1, 2]}, seed=4)
    again = uniform_arch_sampler({'a': [0, 1, 2]}, seed=4)
    assert [draw() for _ in range(5)] == [again() for _ in range(5)]
