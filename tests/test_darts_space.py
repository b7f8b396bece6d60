"""The DARTS cell ModelSpace: labels, shapes, genotypes, two-input samples, cell DAGs, one-shot mutation, freezing."""
import copy
import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from nni.nas.nn.pytorch import LayerChoice
from nni.nas.oneshot.pytorch.strategy import DARTS, RandomOneShot
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from nni_labelfree.search_spaces import DartsSpace, create_space, list_spaces
from nni_labelfree.search_spaces.darts import (
    DARTS_LABELS, DARTS_OPS, FactorizedReduce, Zero, arch_from_genotype, arch_from_probs, count_skip_connections,
    darts_sample_is_valid, genotype_from_alphas, genotype_from_arch, random_darts_sample, repair_darts_sample)
from nni_labelfree.selection import ProfilerConstraint, evolve, space_choices

# Every op kind, stride-2 skips (FactorizedReduce) from both reduce-cell inputs, inputs from intermediate nodes.
GENOTYPE = {
    'normal': [('sep_conv_3x3', 0), ('skip_connect', 1), ('max_pool_3x3', 0), ('dil_conv_3x3', 2),
               ('sep_conv_5x5', 1), ('avg_pool_3x3', 3), ('dil_conv_5x5', 0), ('skip_connect', 4)],
    'normal_concat': [2, 3, 4, 5],
    'reduce': [('max_pool_3x3', 0), ('skip_connect', 1), ('avg_pool_3x3', 1), ('sep_conv_3x3', 2),
               ('skip_connect', 0), ('dil_conv_5x5', 3), ('sep_conv_5x5', 2), ('dil_conv_3x3', 4)],
    'reduce_concat': [2, 3, 4, 5],
}


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def tiny(**kwargs) -> DartsSpace:
    return DartsSpace(**{'width': 4, 'num_cells': 3, **kwargs})


def force_path(supernet: nn.Module, arch: dict) -> None:
    for module in supernet.modules():
        if isinstance(module, BaseSuperNetModule):
            module.resample(memo=dict(arch))


def test_labels_values_and_cell_types():
    space = tiny(num_cells=5)
    choices = space.simplify()
    assert tuple(choices) == DARTS_LABELS and len(DARTS_LABELS) == 28
    assert all(tuple(c.values) == DARTS_OPS for c in choices.values())
    assert DARTS_OPS[0] == 'none' and len(DARTS_OPS) == 8
    assert [cell.reduction for cell in space.cells] == [False, True, False, True, False]  # 5//3, 2*5//3
    labels = {m.label for m in space.cells[3].modules() if isinstance(m, LayerChoice)}
    assert labels == {label for label in DARTS_LABELS if label.startswith('reduce/')}


def test_ops_strides_and_batchnorm():
    space = tiny(affine=False)
    reduce_cell, normal_cell = space.cells[1], space.cells[0]
    assert isinstance(reduce_cell.edges['2_0']['skip_connect'], FactorizedReduce)
    assert isinstance(reduce_cell.edges['3_1']['skip_connect'], FactorizedReduce)
    assert isinstance(reduce_cell.edges['3_2']['skip_connect'], nn.Identity)
    assert isinstance(normal_cell.edges['2_0']['skip_connect'], nn.Identity)
    assert isinstance(reduce_cell.edges['2_0']['max_pool_3x3'].bn, nn.BatchNorm2d)  # BN after pooling
    cell_bns = [m for m in space.cells.modules() if isinstance(m, nn.BatchNorm2d)]
    assert cell_bns and not any(m.affine for m in cell_bns)
    assert all(m.affine for m in tiny(affine=True).cells.modules() if isinstance(m, nn.BatchNorm2d))
    assert isinstance(tiny(pool_bn=False).cells[0].edges['2_0']['avg_pool_3x3'], nn.AvgPool2d)


@pytest.mark.parametrize('kwargs, shape, feature_hw', [
    ({}, (2, 3, 32, 32), 8),
    ({'in_channels': 1}, (2, 1, 32, 32), 8),
    ({'stem': 'imagenet'}, (2, 3, 64, 64), 2),
    ({'stem': 'imagenet', 'in_channels': 1}, (2, 1, 33, 33), 2),  # odd sizes go through FactorizedReduce
])
def test_forward_and_spatial_features(kwargs, shape, feature_hw):
    space = tiny(num_classes=7, **kwargs)
    x = torch.randn(*shape)
    features = space.features(x)
    assert features.shape == (2, space.num_features, feature_hw, feature_hw) and space.num_features == 4 * 4 * 4
    assert space(x).shape == (2, 7)
    assert isinstance(space.classifier, nn.Linear)
    assert torch.allclose(space(x), space.classifier(features.mean((2, 3))), atol=1e-5)


def test_factorized_reduce_reads_both_pixel_phases():
    reduce = FactorizedReduce(2, 4, affine=False).eval()
    with torch.no_grad():
        reduce.conv_1.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        reduce.conv_2.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
    x = torch.rand(1, 2, 5, 5)  # odd: the shifted half reads one padded zero row/column
    out = reduce(x) * (1 + reduce.bn.eps) ** 0.5
    assert out.shape == (1, 4, 3, 3)
    assert torch.allclose(out[:, :2], x[:, :, ::2, ::2], atol=1e-6)
    shifted = torch.zeros(1, 2, 3, 3)
    shifted[:, :, :2, :2] = x[:, :, 1::2, 1::2]
    assert torch.allclose(out[:, 2:], shifted, atol=1e-6)


def test_genotype_round_trips():
    arch = arch_from_genotype(GENOTYPE)
    assert darts_sample_is_valid(arch)
    assert sum(v != 'none' for v in arch.values()) == 16
    assert arch['normal/op_5_4'] == 'skip_connect' and arch['normal/op_5_1'] == 'none'
    assert genotype_from_arch(arch) == GENOTYPE
    assert arch_from_genotype(json.loads(json.dumps(GENOTYPE))) == arch  # JSON turns pairs into lists
    sample = random_darts_sample(random.Random(3))
    assert arch_from_genotype(genotype_from_arch(sample)) == sample
    assert count_skip_connections(GENOTYPE) == 2 == count_skip_connections(arch)


def _alphas(rng: np.random.Generator) -> dict:
    return {label: rng.normal(size=8) for label in DARTS_LABELS}


def test_genotype_from_alphas_never_picks_none_and_picks_two_inputs():
    for seed in range(5):
        alphas = _alphas(np.random.default_rng(seed))
        for label in DARTS_LABELS[::3]:
            alphas[label][0] = 50.0  # `none` dominates these edges: never chosen as an op
        genotype = genotype_from_alphas(alphas)
        arch = arch_from_genotype(genotype)
        assert darts_sample_is_valid(arch)
        assert all(op != 'none' for cell in ('normal', 'reduce') for op, _ in genotype[cell])


def test_genotype_from_alphas_picks_the_strongest():
    alphas = {label: np.zeros(8) for label in DARTS_LABELS}
    alphas['normal/op_4_3'] = np.array([0, 0, 0, 0, 0, 0, 3.0, 0])  # dil_conv_3x3 from node 3
    alphas['normal/op_4_1'] = np.array([0, 0, 0, 2.0, 0, 0, 0, 0])  # skip from input 1
    alphas['normal/op_4_0'] = np.array([9.0, 0, 0, 0, 0, 5.0, 0, 0])  # raw 5, but softmax ~7e-3: weakest
    genotype = genotype_from_alphas(alphas)
    assert genotype['normal'][4:6] == [('skip_connect', 1), ('dil_conv_3x3', 3)]
    assert genotype['normal'][0:2] == [('max_pool_3x3', 0), ('max_pool_3x3', 1)]  # ties: first op, lower inputs
    # Without the softmax the raw 5.0 wins (probabilities, e.g. NNI's export_probs(), skip it).
    assert ('sep_conv_5x5', 0) in genotype_from_alphas(alphas, normalize=False)['normal'][4:6]
    probs = {label: dict(zip(DARTS_OPS, torch.softmax(torch.tensor(a), 0).tolist())) for label, a in alphas.items()}
    assert arch_from_probs(probs) == arch_from_genotype(genotype) == DartsSpace.arch_from_probs(probs)


def test_sample_filter_and_repair():
    rng = random.Random(0)
    uniform = [{label: rng.choice(DARTS_OPS) for label in DARTS_LABELS} for _ in range(200)]
    assert not any(darts_sample_is_valid(s) for s in uniform)
    repaired = [DartsSpace.repair(s, random.Random(i)) for i, s in enumerate(uniform)]
    assert all(DartsSpace.sample_filter(s) for s in repaired)
    for before, after in zip(uniform, repaired):  # repair only touches what it must
        for cell in ('normal', 'reduce'):
            for dst in range(2, 6):
                labels = [f'{cell}/op_{dst}_{src}' for src in range(dst)]
                real_before = [lab for lab in labels if before[lab] != 'none']
                kept = [lab for lab in labels if after[lab] == before[lab] and after[lab] != 'none']
                assert len(kept) == min(2, len(real_before))
    assert repair_darts_sample(uniform[0], random.Random(7)) == repair_darts_sample(uniform[0], random.Random(7))
    assert len({str(repair_darts_sample(uniform[0], random.Random(i))) for i in range(10)}) > 1
    valid = dict(repaired[0], extra='kept')
    rng = random.Random(1)
    state = rng.getstate()
    assert repair_darts_sample(valid, rng) == valid and rng.getstate() == state
    assert random_darts_sample(random.Random(5)) == random_darts_sample(random.Random(5))


def test_repair_in_evolution_keeps_every_candidate_valid():
    choices = space_choices(tiny())
    assert tuple(choices) == DARTS_LABELS
    result = evolve(choices, lambda arch: sum(v == 'sep_conv_3x3' for v in arch.values()), repair=DartsSpace.repair,
                    population_size=12, top_k=4, num_mutation=6, num_crossover=6, generations=3, seed=0)
    assert all(darts_sample_is_valid(arch) for arch, _ in result.ranked)


def test_cell_dags_give_14_edges_and_30_paths_per_cell():
    space = tiny(num_cells=4)
    dags = space.cell_dags()
    assert len(dags) == 4
    for index, dag in enumerate(dags):
        assert len(dag.edges) == 14 and dag.sources == (0, 1) and dag.sinks == (2, 3, 4, 5)
        paths = dag.paths()
        assert len(paths) == 30 == len(set(paths))
        ends = [dag.edges[path[-1]][1] for path in paths]
        assert [ends.count(node) for node in (2, 3, 4, 5)] == [2, 4, 8, 16]
        assert all(dag.edges[path[0]][0] in (0, 1) for path in paths)
        for src, dst, label, module_name in dag.edges:
            module = space.get_submodule(module_name)
            assert isinstance(module, LayerChoice) and module.label == label
            assert label == f'{"reduce" if space.cells[index].reduction else "normal"}/op_{dst}_{src}'


def test_darts_relaxes_every_edge_with_one_alpha_per_label_and_trains_every_parameter():
    space = tiny(num_cells=4, affine=True)
    DARTS().mutate_model(space)
    mixed = [m for m in space.modules() if isinstance(m, BaseSuperNetModule)]
    assert len(mixed) == 4 * 14
    alphas = {id(m._arch_alpha): m for m in mixed}
    assert len(alphas) == 28 and {m.label for m in alphas.values()} == set(DARTS_LABELS)
    assert all(len(m._arch_alpha) == 8 and m.names == list(DARTS_OPS) for m in mixed)
    space(torch.randn(2, 3, 16, 16)).logsumexp(1).sum().backward()
    no_grad = [name for name, p in space.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad
    probs = {m.label: dict(zip(m.names, torch.softmax(m._arch_alpha.detach(), 0).tolist())) for m in mixed}
    assert darts_sample_is_valid(space.arch_from_probs(probs))


def test_random_one_shot_trains_a_valid_path():
    space = tiny()
    RandomOneShot().mutate_model(space)
    arch = random_darts_sample(random.Random(1))
    force_path(space, arch)
    sampled = {(m.label, m._sampled) for m in space.modules() if isinstance(m, LayerChoice)}
    assert sampled == set(arch.items())
    out = space(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    assert out.shape == (2, 10)


def test_frozen_network_skips_none_edges_exactly():
    space = tiny(affine=True)
    supernet = copy.deepcopy(space)
    arch = arch_from_genotype(GENOTYPE)
    net = space.freeze(arch)
    assert not any(isinstance(m, (LayerChoice, BaseSuperNetModule)) for m in net.modules())
    calls = []
    for module in net.modules():
        if isinstance(module, Zero):
            module.register_forward_hook(lambda *args: calls.append(1))
    RandomOneShot().mutate_model(supernet)
    force_path(supernet, arch)
    x = torch.randn(2, 3, 16, 16)
    net.eval(), supernet.eval()
    assert torch.allclose(net(x), supernet(x), atol=1e-5)  # same weights: skipping `none` changes nothing
    assert not calls


def test_frozen_node_without_inputs_stays_zero(caplog):
    arch = dict(arch_from_genotype(GENOTYPE), **{'normal/op_2_0': 'none', 'normal/op_2_1': 'none'})
    net = tiny().freeze(arch)
    assert 'normal/2' in caplog.text
    cell = net.cells[0]
    s = net.stem(torch.randn(1, 3, 16, 16))
    assert not cell(s, s)[:, :4].any() and cell(s, s)[:, 4:].any()  # node 2 = the first 4 output channels


def _direct_flops(net: nn.Module, x: torch.Tensor) -> int:
    """Conv, BN, ReLU and Linear FLOPs of one image, counted from the tensors a forward sees (NNI's conventions)."""
    total = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            total.append(output[0].numel() * module.in_channels // module.groups * math.prod(module.kernel_size))
        elif isinstance(module, nn.BatchNorm2d):
            total.append(2 * (1 + module.affine) * inputs[0][0].numel())
        elif isinstance(module, nn.ReLU):
            total.append(inputs[0][0].numel())
        elif isinstance(module, nn.Linear):
            total.append(module.out_features * (module.in_features + 1))

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    net(x)
    for handle in handles:
        handle.remove()
    return sum(total)


@pytest.mark.parametrize('kwargs, shape, golden', [
    ({'affine': True}, (1, 3, 32, 32), (2527882, 8254)),
    ({'stem': 'imagenet', 'in_channels': 1}, (1, 1, 64, 64), (176266, 7376)),
])
def test_profiler_golden_numbers_match_a_direct_count(kwargs, shape, golden):
    space = tiny(**kwargs)
    constraint = ProfilerConstraint(space, torch.randn(*shape), max_flops=1e12)
    arch = arch_from_genotype(GENOTYPE)
    value = constraint.value(arch)
    net = space.freeze(arch)
    assert (value['flops'], value['params']) == golden
    assert value['flops'] == _direct_flops(net, torch.randn(*shape))
    assert value['params'] == sum(p.numel() for p in net.parameters())
    lighter = dict(arch, **{'normal/op_2_0': 'max_pool_3x3'})  # sep_conv_3x3 -> pool: cheaper, fewer params
    assert constraint.value(lighter)['flops'] < value['flops']


def test_registry():
    assert 'darts' in list_spaces()
    assert isinstance(create_space('darts', width=4, num_cells=3), DartsSpace)


@pytest.mark.parametrize('kwargs, message', [
    ({'width': 0}, 'width must be a positive integer'),
    ({'width': 4.0}, 'width must be a positive integer'),
    ({'num_cells': 2}, 'num_cells must be at least 3'),
    ({'stem': 'mnist'}, "stem must be 'cifar' or 'imagenet'"),
    ({'stem': 'imagenet', 'width': 5}, 'needs an even width'),
    ({'affine': 1}, 'affine must be True or False'),
    ({'in_channels': True}, 'in_channels must be a positive integer'),
])
def test_bad_space_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_bad_archs_and_genotypes():
    arch = arch_from_genotype(GENOTYPE)
    with pytest.raises(ValueError, match='lacks 1 of the 28 DARTS labels'):
        tiny().freeze({k: v for k, v in arch.items() if k != 'reduce/op_5_4'})
    with pytest.raises(ValueError, match='unknown ops'):
        darts_sample_is_valid(dict(arch, **{'normal/op_2_0': 'conv_7x7'}))
    with pytest.raises(ValueError, match='node 2 of the normal cell has 1 non-none'):
        genotype_from_arch(dict(arch, **{'normal/op_2_0': 'none'}))
    with pytest.raises(TypeError, match='random.Random'):
        repair_darts_sample(arch, 0)
    twice = dict(GENOTYPE, normal=[('sep_conv_3x3', 0), ('skip_connect', 0)] + GENOTYPE['normal'][2:])
    with pytest.raises(ValueError, match='takes input 0 twice'):
        arch_from_genotype(twice)
    with pytest.raises(ValueError, match='input index in 0..1'):
        arch_from_genotype(dict(GENOTYPE, reduce=[('sep_conv_3x3', 2)] + GENOTYPE['reduce'][1:]))
    with pytest.raises(ValueError, match="needs an op from"):
        arch_from_genotype(dict(GENOTYPE, reduce=[('none', 0)] + GENOTYPE['reduce'][1:]))
    with pytest.raises(ValueError, match='concatenates all of nodes'):
        arch_from_genotype(dict(GENOTYPE, normal_concat=[4, 5]))
    with pytest.raises(ValueError, match='no weights for 1 labels'):
        genotype_from_alphas({label: np.zeros(8) for label in DARTS_LABELS[1:]})
    with pytest.raises(ValueError, match='expected 8 finite weights'):
        genotype_from_alphas({label: np.zeros(7) for label in DARTS_LABELS})
