"""RLNAS on the DARTS cell space: two-input sampling, the path-aware DARTS angle, FLOPs-constrained evolution."""
import random

import numpy as np
import pytest
import torch

from nni_labelfree.metrics.angle import AnglePolicy, PathAngleScorer, angle_scorer
from nni_labelfree.search_spaces import DartsSpace
from nni_labelfree.search_spaces.darts import (CELL_TYPES, DARTS_LABELS, DARTS_OPS, NODES, darts_sample_is_valid,
                                               random_darts_sample)
from nni_labelfree.selection import ProfilerConstraint
from nni_labelfree.strategies import RLNAS

from helpers import perturb_supernet, run_rlnas

WIDTH, CELLS, IMAGE = 4, 3, 8  # reductions at cells 1 and 2

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _space():
    return DartsSpace(width=WIDTH, num_cells=CELLS, affine=True)


@pytest.fixture(scope='module')
def flops_constraint():
    """One traced profiler for the module (tracing DARTS takes seconds); tests set ``limit`` themselves."""
    return ProfilerConstraint(_space(), torch.randn(1, 3, IMAGE, IMAGE), max_flops=1)


@pytest.fixture(scope='module')
def darts_run():
    return run_rlnas(_space, IMAGE, batch_size=4, max_epochs=5)


def test_training_samples_exactly_two_real_inputs_per_node(darts_run):
    _, strategy, samples = darts_run
    assert len(samples) == 60
    for sample in samples:
        for cell in CELL_TYPES:
            for dst in NODES:
                ops = [sample[f'{cell}/op_{dst}_{src}'] for src in range(dst)]
                assert sum(op != 'none' for op in ops) == 2, (cell, dst, ops)
    assert len({tuple(s[lb] for lb in DARTS_LABELS) for s in samples}) == len(samples)  # draws, not a fixed path
    used = {s[lb] for s in samples for lb in DARTS_LABELS}
    assert used == set(DARTS_OPS)
    assert strategy.angle_policy == AnglePolicy(skip='identity')  # the space's default policy


def test_sampling_is_a_function_of_the_seed(darts_run):
    _, strategy, samples = darts_run
    module = strategy.oneshot_module
    module._sampler_rng = np.random.RandomState(strategy.seed)
    assert [module.resample() for _ in range(5)] == samples[:5]


def test_nas_experiment_exports_a_valid_darts_architecture(darts_run):
    experiment, strategy, _ = darts_run
    (arch,) = experiment.export_top_models(top_k=1, formatter='dict')
    assert set(arch) == set(DARTS_LABELS) and darts_sample_is_valid(arch)
    ranked = strategy.oneshot_module.search_result
    assert all(darts_sample_is_valid(a) for a, _ in ranked)
    angles = [angle for _, angle in ranked]
    assert angles == sorted(angles, reverse=True) and angles[0] > 0


def test_flops_constrained_evolution_only_returns_legal_architectures(darts_run, flops_constraint):
    _, strategy, _ = darts_run
    constraint = flops_constraint
    rng = random.Random(0)
    flops = sorted(constraint.value(random_darts_sample(rng))['flops'] for _ in range(20))
    constraint.limit['flops'] = flops[5]  # about a quarter of random architectures fit
    constrained = RLNAS(seed=1, constraint=constraint, evolution=dict(population_size=10, top_k=4, num_mutation=5,
                                                                       num_crossover=5, generations=2))
    constrained.repair = strategy.repair
    ranked = constrained.select(strategy.oneshot_module.angle_scorer())
    assert ranked and all(constraint(a) and darts_sample_is_valid(a) for a, _ in ranked)


def test_impossible_constraint_reports_the_smallest_flops(darts_run, flops_constraint):
    _, strategy, _ = darts_run
    constraint = flops_constraint
    constraint.limit['flops'] = 1000.0
    impossible = RLNAS(constraint=constraint, evolution=dict(population_size=5, max_tries=15))
    impossible.repair = strategy.repair
    with pytest.raises(ValueError, match=r'cannot be met.*Smallest constrained value seen: \{\'flops\': \d'):
        impossible.select(strategy.oneshot_module.angle_scorer())


# -- the DARTS angle ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def perturbed():
    torch.manual_seed(0)
    return perturb_supernet(_space())


def _archs(n, seed=0):
    """Valid archs and, every third one, an arch with `none`-only nodes (paths dropped)."""
    rng = random.Random(seed)
    archs = [random_darts_sample(rng) for _ in range(n)]
    for arch in archs[::3]:
        for src in range(2):
            arch[f'normal/op_2_{src}'] = 'none'
    return archs


@pytest.mark.parametrize('policy', [AnglePolicy(**DartsSpace.angle_policy_defaults), AnglePolicy(),
                                    AnglePolicy(fixed='none', pool='const4d', skip='identity')],
                         ids=lambda p: f'{p.fixed}-{p.pool}-{p.skip}')
def test_darts_path_angle_matches_naive_definition(perturbed, policy):
    space, initial = perturbed
    scorer = angle_scorer(space, initial, policy=policy)
    assert isinstance(scorer, PathAngleScorer) and len(scorer._paths) == 30 * CELLS
    archs = _archs(12)
    angles = scorer.angles(scorer.encode(archs))
    assert np.all(angles > 0)
    for arch, angle in zip(archs, angles):
        assert np.cos(angle) == pytest.approx(np.cos(scorer.naive_angle(arch)), abs=1e-10)


def test_darts_angle_one_at_a_time_equals_batched(perturbed):
    space, initial = perturbed
    scorer = angle_scorer(space, initial, policy=AnglePolicy(**DartsSpace.angle_policy_defaults))
    archs = _archs(40, seed=1)  # more than the gather threshold: the batched call takes the per-path loop
    batched = scorer.angles(scorer.encode(archs))
    single = [scorer.angle(arch) for arch in archs]
    np.testing.assert_allclose(np.cos(batched), np.cos(single), rtol=0, atol=1e-12)


def _vector(scorer, module, op):
    return [t.double() for t in scorer._candidate_vector(module, op, 'trained')]


def test_darts_pieces_pool_skip_and_convs(perturbed):
    space, initial = perturbed
    scorer = angle_scorer(space, initial, policy=AnglePolicy(**DartsSpace.angle_policy_defaults))
    normal, reduce = 'cells.0.edges.2_0', 'cells.1.edges.2_0'  # stride 1; stride 2 (reduction edge from input 0)
    for module, c in ((normal, WIDTH), (reduce, 2 * WIDTH)):
        for pool in ('max_pool_3x3', 'avg_pool_3x3'):
            bn = space.get_submodule(f'{module}.{pool}.bn')
            const, weight, bias = _vector(scorer, module, pool)
            assert torch.equal(const, torch.full((c, 3, 3), 1 / 9, dtype=torch.float64))
            assert torch.equal(weight, bn.weight.detach().double()) and torch.equal(bias, bn.bias.detach().double())
        dil_bn = space.get_submodule(f'{module}.dil_conv_3x3.3')
        assert torch.equal(_vector(scorer, module, 'dil_conv_3x3')[-1], dil_bn.bias.detach().double())  # P5 fixed
        assert len(_vector(scorer, module, 'sep_conv_3x3')) == 8  # 4 convs, 2 BN weight/bias pairs
    assert [t.shape for t in _vector(scorer, normal, 'skip_connect')] == [torch.Size([WIDTH, WIDTH])]
    assert torch.equal(_vector(scorer, normal, 'skip_connect')[0], torch.eye(WIDTH, dtype=torch.float64))
    fr = space.get_submodule(f'{reduce}.skip_connect')
    expected = [fr.conv_1.weight, fr.conv_2.weight, fr.bn.weight, fr.bn.bias]
    got = _vector(scorer, reduce, 'skip_connect')
    assert len(got) == 4 and all(torch.equal(a, b.detach().double()) for a, b in zip(got, expected))
    # Fixed parts: stem, each cell's preprocess0/1 and the classifier.
    fixed = set(scorer._fixed_vector())
    assert {'stem.0.weight', 'stem.1.weight', 'stem.1.bias', 'classifier.weight'} <= fixed
    for index in range(CELLS):
        for pre in ('preprocess0', 'preprocess1'):
            assert any(n.startswith(f'cells.{index}.{pre}.') for n in fixed), (index, pre)
    assert not any('.edges.' in n for n in fixed)
