"""The NAS-Bench-201 ModelSpace: labels, shared genotype, RLNAS search cell, DAG hook, freezing, profiling."""
import pytest
import torch
from torch import nn

from nni.nas.nn.pytorch import LayerChoice
from nni.nas.oneshot.pytorch.strategy import RandomOneShot

from nni_labelfree.benchmarks.nasbench201 import NB201_LABELS, NB201_OPS, NB201_PATHS, string_to_arch
from nni_labelfree.search_spaces import NasBench201Space, create_space, list_spaces
from nni_labelfree.search_spaces.nasbench201 import nb201_sample_is_trainable
from nni_labelfree.selection import ProfilerConstraint

BEST = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|'


def test_labels_and_values_are_the_benchmark_ones():
    space = NasBench201Space(channels=8, cells_per_stage=1)
    choices = space.simplify()
    assert tuple(choices) == NB201_LABELS
    assert all(tuple(c.values) == NB201_OPS for c in choices.values())


def test_search_cell_bn_has_no_affine_and_fixed_layers_do():
    space = NasBench201Space(channels=8, cells_per_stage=1)
    for name, module in space.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.affine == ('edges' not in name), name


def test_one_genotype_is_shared_by_all_cells():
    space = NasBench201Space(channels=8, cells_per_stage=2)
    RandomOneShot().mutate_model(space)
    sampled = {}
    for module in space.modules():
        if hasattr(module, 'resample'):
            sampled.update(module.resample(memo=sampled))
    chosen = {(m.label, m._sampled) for m in space.modules() if isinstance(m, LayerChoice)}
    assert len(chosen) == len(NB201_LABELS)  # 6 cells x 6 edges, but one op per label
    assert space(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cell_dags_give_the_four_benchmark_paths():
    space = NasBench201Space(channels=8, cells_per_stage=2)
    dags = space.cell_dags()
    assert len(dags) == 6
    for dag in dags:
        assert sorted(dag.paths()) == sorted(NB201_PATHS)
        for _, _, label, module_name in dag.edges:
            assert space.get_submodule(module_name).label == label


def test_freeze_builds_a_fixed_network():
    space = NasBench201Space(channels=8, cells_per_stage=1, num_classes=7)
    net = space.freeze(string_to_arch(BEST))
    assert not any(isinstance(m, LayerChoice) for m in net.modules())
    assert net(torch.randn(3, 3, 32, 32)).shape == (3, 7)


def test_profiler_golden_numbers():
    """FLOPs and parameters from NNI's profiler for the best cell at C=16, N=1, against a direct count."""
    space = NasBench201Space(channels=16, cells_per_stage=1)
    constraint = ProfilerConstraint(space, torch.randn(1, 3, 32, 32), max_flops=1e12)
    all_conv = {label: 'nor_conv_3x3' for label in NB201_LABELS}
    value = constraint.value(all_conv)
    net = space.freeze(all_conv)
    assert value['params'] == sum(p.numel() for p in net.parameters()) == 363610
    assert value['flops'] == 50987658
    assert constraint.value({label: 'skip_connect' for label in NB201_LABELS})['flops'] < value['flops']


def test_sample_filter_rejects_nodes_without_inputs():
    arch = {label: 'nor_conv_3x3' for label in NB201_LABELS}
    assert nb201_sample_is_trainable(arch)
    arch.update({'cell/2_0': 'none', 'cell/2_1': 'none'})
    assert not nb201_sample_is_trainable(arch)


def test_registry_and_bad_arguments():
    assert 'nasbench201' in list_spaces()
    assert isinstance(create_space('nasbench201', channels=4, cells_per_stage=1), NasBench201Space)
    with pytest.raises(ValueError, match='Unknown search space'):
        create_space('nasbench101')
    with pytest.raises(ValueError, match='channels must be a positive integer'):
        NasBench201Space(channels=0)
