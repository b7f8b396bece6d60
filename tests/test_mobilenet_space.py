"""The MobileNet-like (ProxylessNAS) space: layout, per-block angle, RLNAS end to end, FLOPs-constrained evolution."""
import contextlib
import io
import json
import random

import numpy as np
import pytest
import torch

from nni_labelfree.experiment import cli
from nni_labelfree.metrics.angle import AnglePolicy, ChoiceAngleScorer, angle_scorer
from nni_labelfree.search_spaces import MobileNetSpace, create_space, list_spaces
from nni_labelfree.search_spaces.mobilenet import MBCONV_OPS, SKIP, MBConv, make_divisible, rlnas_encoding
from nni_labelfree.selection import ProfilerConstraint, evolve
from nni_labelfree.strategies import RLNAS

from helpers import perturb_supernet, run_rlnas

DEPTHS, IMAGE = (2, 2, 1, 1, 1, 1), 16
TINY = dict(width_mult=0.1, stage_depths=DEPTHS, num_classes=10, stem='cifar', channel_divisor=4)
SKIP_LABELS = ('s1_b1', 's2_b1')  # the only blocks of TINY that may skip

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _tiny(**overrides):
    return MobileNetSpace(**{**TINY, **overrides})


def _random_arch(space, rng):
    return {label: rng.choice(values) for label, values in space.block_choices.items()}


# -- layout --------------------------------------------------------------------------------------------------------

def test_rlnas_layout_21_blocks_skip_only_where_width_and_resolution_are_kept():
    space = MobileNetSpace()
    assert space.widths == (40, 24, 32, 56, 112, 128, 256, 432, 1728)
    labels = list(space.block_choices)
    assert len(labels) == 21 and labels[:5] == ['s1_b0', 's1_b1', 's1_b2', 's1_b3', 's2_b0'] and labels[-1] == 's6_b0'
    no_skip = [i for i, label in enumerate(labels) if SKIP not in space.block_choices[label]]
    assert no_skip == [0, 4, 8, 12, 16, 20]  # RLNAS: layer 0 and stage_last_id
    assert all(space.block_choices[label] == list(MBCONV_OPS) + [SKIP] for label in labels if label[-1] != '0')
    assert list(space.simplify()) == labels  # NNI's label order is the block order
    blocks = list(space.blocks)
    for index, choice in enumerate(blocks):
        mbconv = choice['k5_e6']
        dw = mbconv.conv[3]
        assert dw.kernel_size == (5, 5) and dw.groups == dw.in_channels == 6 * mbconv.conv[0].in_channels
        assert mbconv.use_shortcut == (index not in no_skip)


@pytest.mark.parametrize('stem, size, spatial', [('imagenet', 224, 7), ('cifar', 32, 4), ('cifar', IMAGE, 2)])
def test_forward_features_and_downsampling(stem, size, spatial):
    space = _tiny(stem=stem)
    net = space.freeze(_random_arch(space, random.Random(0)))
    x = torch.randn(2, 3, size, size)
    assert net.features(x).shape == (2, space.num_features, spatial, spatial)
    assert net(x).shape == (2, 10)


def test_skip_block_is_the_identity_and_mbconv_shortcut_adds_the_input():
    space = _tiny()
    arch = {label: (SKIP if label in SKIP_LABELS else 'k3_e3') for label in space.block_choices}
    net = space.freeze(arch)
    x = torch.randn(2, space.widths[2], 4, 4)
    assert torch.equal(net.blocks[1](x), x)
    block = MBConv(8, 8, 3, 3, 1)
    with torch.no_grad():
        block.conv[-1].weight.zero_()  # the projection's BN: the residual branch outputs its bias
        block.conv[-1].bias.fill_(0.5)
    y = torch.randn(2, 8, 4, 4)
    assert torch.allclose(block.eval()(y), y + 0.5)


def test_every_parameter_of_a_frozen_network_gets_a_gradient():
    space = _tiny()
    net = space.freeze({label: 'k7_e6' for label in space.block_choices})
    net(torch.randn(2, 3, IMAGE, IMAGE)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_width_scaling_and_encoding():
    assert [make_divisible(v, 8) for v in (4.0, 24 * 0.35, 56 * 0.5, 1728 * 0.1)] == [8, 8, 32, 176]
    assert _tiny().widths == (4, 4, 4, 8, 12, 12, 24, 44, 172)
    space = _tiny()
    arch = {label: (SKIP if label in SKIP_LABELS else 'k7_e3') for label in space.block_choices}
    assert rlnas_encoding(arch, space) == [4, -1, 4, -1, 4, 4, 4, 4]


@pytest.mark.parametrize('kwargs, message', [
    ({'width_mult': 0}, 'width_mult must be a positive number'),
    ({'stage_depths': (4, 4, 4)}, 'stage_depths must list the choice blocks of each of the 6 stages'),
    ({'stage_depths': (4, 4, 0, 4, 4, 1)}, 'every stage depth must be a positive integer'),
    ({'stem': 'mnist'}, "stem must be 'imagenet'"),
    ({'num_classes': 1.5}, 'num_classes must be a positive integer'),
    ({'base_widths': (8, 8)}, 'base_widths must hold 9 widths'),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _tiny(**kwargs)


def test_freeze_refuses_skip_where_it_is_impossible_and_missing_blocks():
    space = _tiny()
    arch = {label: 'k3_e3' for label in space.block_choices}
    with pytest.raises(ValueError, match=r"\{'s1_b0': 'skip'\}.*first block of a stage cannot skip"):
        space.freeze({**arch, 's1_b0': SKIP})
    with pytest.raises(ValueError, match="lacks 1 of the 8 block labels"):
        space.freeze({k: v for k, v in arch.items() if k != 's6_b0'})


def test_registry():
    assert 'mobilenet' in list_spaces()
    assert isinstance(create_space('mobilenet', **TINY), MobileNetSpace)


# -- the per-block angle -------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def perturbed():
    torch.manual_seed(0)
    return perturb_supernet(_tiny())


def _independent_angle(space, initial, arch, fixed=True):
    """RLNAS's MobileNet vector built by hand: fixed layers, each chosen MBConv's parameters, eye(out, in) for skip."""
    trained = dict(space.named_parameters())
    parts0, parts1 = [], []
    for name, p in trained.items():
        if fixed and not name.startswith('blocks.'):
            parts0.append(initial[name].flatten()), parts1.append(p.detach().flatten())
    for index, label in enumerate(space.block_choices):
        if arch[label] == SKIP:
            c = space.widths[1 + int(label[1])]
            parts0.append(torch.eye(c).flatten()), parts1.append(torch.eye(c).flatten())
            continue
        prefix = f'blocks.{index}.{arch[label]}.'
        for name, p in trained.items():
            if name.startswith(prefix):
                parts0.append(initial[name].flatten()), parts1.append(p.detach().flatten())
    v0, v1 = torch.cat(parts0).double(), torch.cat(parts1).double()
    return float(torch.acos(torch.dot(v0, v1) / (v0.norm() * v1.norm())))


@pytest.mark.parametrize('policy', [AnglePolicy(**MobileNetSpace.angle_policy_defaults),
                                    AnglePolicy(fixed='none', skip='identity')], ids=['rlnas', 'no_fixed'])
def test_decomposed_angle_equals_naive_concatenation(perturbed, policy):
    space, initial = perturbed
    scorer = angle_scorer(space, initial, policy=policy)
    assert isinstance(scorer, ChoiceAngleScorer) and scorer.labels == list(space.block_choices)
    rng = random.Random(0)
    archs = [_random_arch(space, rng) for _ in range(10)]
    archs.append({label: (SKIP if SKIP in values else 'k3_e3') for label, values in space.block_choices.items()})
    angles = scorer.angles(scorer.encode(archs))
    assert np.all(angles > 0) and len(set(np.round(angles, 12))) == len(archs)
    for arch, angle in zip(archs, angles):
        assert np.cos(angle) == pytest.approx(np.cos(scorer.naive_angle(arch)), abs=1e-10)
        expected = _independent_angle(space, initial, arch, fixed=policy.fixed == 'all')
        assert np.cos(angle) == pytest.approx(np.cos(expected), abs=1e-10)


def test_skip_enters_as_identity_and_changes_the_angle(perturbed):
    space, initial = perturbed
    scorer = angle_scorer(space, initial, policy=AnglePolicy(skip='identity'))
    c = space.widths[2]
    _, stats = scorer._candidate_stats('blocks.1', SKIP)
    assert stats.tolist() == [c, c, c]  # <eye, eye>, |eye|^2, |eye|^2 of eye(C)
    empty = angle_scorer(space, initial, policy=AnglePolicy(skip='empty'))
    arch = {label: (SKIP if label in SKIP_LABELS else 'k5_e3') for label in space.block_choices}
    assert scorer.angle(arch) < empty.angle(arch)  # constant parts pull the angle towards 0


# -- RLNAS end to end and constrained evolution --------------------------------------------------------------------

@pytest.fixture(scope='module')
def mobilenet_run():
    return run_rlnas(_tiny, IMAGE, batch_size=8, max_epochs=4)


def test_rlnas_trains_uniform_single_paths_and_exports_a_valid_architecture(mobilenet_run):
    experiment, strategy, samples = mobilenet_run
    space = _tiny()
    assert len(samples) == 24 and strategy.angle_policy == AnglePolicy(skip='identity')
    assert {s[label] for s in samples for label in SKIP_LABELS} == set(MBCONV_OPS) | {SKIP}
    assert all(s[label] != SKIP for s in samples for label in space.block_choices if label not in SKIP_LABELS)
    (arch,) = experiment.export_top_models(top_k=1, formatter='dict')
    assert set(arch) == set(space.block_choices)
    assert all(arch[label] in values for label, values in space.block_choices.items())
    ranked = strategy.oneshot_module.search_result
    angles = [angle for _, angle in ranked]
    assert ranked[0][0] == arch and angles == sorted(angles, reverse=True) and angles[-1] > 0
    assert space.freeze(arch)(torch.randn(1, 3, IMAGE, IMAGE)).shape == (1, 10)


@pytest.fixture(scope='module')
def flops_constraint():
    return ProfilerConstraint(_tiny(), torch.randn(1, 3, IMAGE, IMAGE), max_flops=1)


def test_flops_constrained_evolution_never_returns_an_architecture_over_the_limit(mobilenet_run, flops_constraint):
    _, strategy, _ = mobilenet_run
    space = _tiny()
    rng = random.Random(0)
    flops = sorted(flops_constraint.value(_random_arch(space, rng))['flops'] for _ in range(40))
    flops_constraint.limit['flops'] = flops[10]  # about a quarter of random architectures fit
    scorer = strategy.oneshot_module.angle_scorer()
    unconstrained = evolve(scorer.choices, scorer.angle, seed=1, population_size=12, top_k=4, num_mutation=6,
                           num_crossover=6, generations=3)
    assert flops_constraint.value(unconstrained.best)['flops'] > flops[10]  # the limit binds: the angle wants more
    result = evolve(scorer.choices, scorer.angle, constraint=flops_constraint, seed=1, population_size=12, top_k=4,
                    num_mutation=6, num_crossover=6, generations=3)
    assert result.num_evaluated > 12
    assert all(flops_constraint.value(arch)['flops'] <= flops[10] for arch, _ in result.ranked)


def test_unreachable_constraint_reports_the_smallest_flops_seen(mobilenet_run, flops_constraint):
    _, strategy, _ = mobilenet_run
    space = _tiny()
    smallest = {label: (SKIP if SKIP in values else 'k3_e3') for label, values in space.block_choices.items()}
    floor = flops_constraint.value(smallest)['flops']
    flops_constraint.limit['flops'] = floor - 1
    impossible = RLNAS(constraint=flops_constraint, evolution=dict(population_size=5, max_tries=200))
    with pytest.raises(ValueError, match=r'cannot be met.*200 random samples.*Smallest constrained value seen') as err:
        impossible.select(strategy.oneshot_module.angle_scorer())
    seen = float(str(err.value).split("{'flops': ")[1].split(',')[0])
    assert floor <= seen < floor * 1.5


def test_cli_search_on_mobilenet_with_a_flops_limit(tmp_path):
    output = tmp_path / 'out'
    argv = ['search', '--strategy', 'rlnas', '--space', 'mobilenet', '--channels', '4', '--cells-per-stage', '2',
            '--image-size', str(IMAGE), '--data', 'noise', '--num-images', '32', '--batch-size', '16',
            '--epochs', '1', '--search', 'evolution', '--max-flops', '2e6', '--num-threads', '1',
            '--evolution', '{population_size: 8, top_k: 4, num_mutation: 4, num_crossover: 4, generations: 2}',
            '--output', str(output)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(argv) == 0
    result = json.loads((output / 'arch.json').read_text())
    space = MobileNetSpace(width_mult=4 / 24, stage_depths=(2,) * 5 + (1,), num_classes=10, stem='cifar',
                           channel_divisor=4)  # what --space mobilenet --channels 4 --cells-per-stage 2 builds
    assert set(result['arch']) == set(space.block_choices) and result['angle'] > 0
    constraint = ProfilerConstraint(space, torch.randn(1, 3, IMAGE, IMAGE), max_flops=2e6)
    assert all(constraint(arch) for arch, _ in result['top'])
