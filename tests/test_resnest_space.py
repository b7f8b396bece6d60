"""The Pi-NAS ResNeSt space: split attention, candidate shapes, shared downsample, training, profiler, freeze."""
import copy
import math
import random

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nni.nas.nn.pytorch import LayerChoice
from nni.nas.oneshot.pytorch.strategy import DARTS, RandomOneShot
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
from nni.nas.profiler.pytorch.flops import FlopsParamsProfiler

from nni_labelfree.search_spaces import ResNeStSpace, create_space, list_spaces
from nni_labelfree.search_spaces.resnest import (
    PINAS_CLS_INDICES, RESNEST_CANDIDATES, ResNeStChoiceBlock, arch_from_indices, indices_from_arch, resnest_labels)
from nni_labelfree.search_spaces.resnest_blocks import BlockSpec, SplitAttentionConv, group_width

NAMES = tuple(RESNEST_CANDIDATES)


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def tiny(**kwargs) -> ResNeStSpace:
    return ResNeStSpace(**{'base_width': 4, 'depths': (1, 1, 1, 1), 'stem': 'cifar', 'num_classes': 5, **kwargs})


def force_path(supernet: nn.Module, arch: dict) -> None:
    for module in supernet.modules():
        if isinstance(module, BaseSuperNetModule):
            module.resample(memo=dict(arch))


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode comparisons see every BN."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)


def naive_split_attention(module: SplitAttentionConv, x: torch.Tensor) -> torch.Tensor:
    """ResNeSt's definition written out channel by channel (eval mode)."""
    r, k, c = module.radix, module.cardinality, module.channels
    u = F.relu(module.bn(module.conv(x)))
    splits = [u[:, i * c:(i + 1) * c] for i in range(r)]
    gap = sum(splits).mean(dim=(2, 3), keepdim=True)
    logits = module.fc2(F.relu(module.bn_attention(module.fc1(gap))))[:, :, 0, 0]
    out = torch.zeros_like(splits[0])
    per_group = c // k
    for group in range(k):
        for j in range(per_group):
            channel = group * per_group + j
            # fc2's group `group` emits its R*C/K logits split-major: position group*R*C/K + split*C/K + j
            z = torch.stack([logits[:, group * r * per_group + i * per_group + j] for i in range(r)], dim=1)
            weights = torch.sigmoid(z) if r == 1 else torch.softmax(z, dim=1)
            for i in range(r):
                out[:, channel] += weights[:, i, None, None] * splits[i][:, channel]
    return out


@pytest.mark.parametrize('name', NAMES)
def test_split_attention_matches_the_definition(name):
    spec = RESNEST_CANDIDATES[name]
    torch.manual_seed(0)
    module = SplitAttentionConv(group_width(16, spec), spec, hidden=4 * spec.cardinality)
    randomize_batchnorm(module, 1)
    module.eval()
    x = torch.randn(3, module.channels, 5, 5)
    assert torch.allclose(module(x), naive_split_attention(module, x), atol=1e-5)
    if spec.radix > 1:  # r-softmax: the weights of the R splits sum to one per cardinal group and channel
        logits = torch.randn(3, module.channels * spec.radix, 1, 1)
        assert torch.allclose(module.split_weights(logits).sum(1), torch.ones(3, module.channels, 1, 1))


def test_group_widths_follow_resnest_and_stay_divisible():
    assert [group_width(64, spec) for spec in RESNEST_CANDIDATES.values()] == [64, 64, 84, 80]
    assert [group_width(512, spec) for spec in RESNEST_CANDIDATES.values()] == [512, 512, 672, 640]
    assert group_width(8, BlockSpec(2, 2, 40)) == 12  # 5 per group raised to 6: each split needs whole channels
    with pytest.raises(ValueError, match='multiple of radix'):
        SplitAttentionConv(10, BlockSpec(2, 2, 40), hidden=4)


def test_labels_candidates_and_layout():
    space = tiny(depths=(2, 1, 1, 1))
    choices = space.simplify()
    assert list(choices) == resnest_labels(5) and all(tuple(c.values) == NAMES for c in choices.values())
    assert resnest_labels() == [f'block{i}' for i in range(16)]
    # a projection in every stage's first block (channels change, then stride 2), identity in block 1
    assert [b.downsample is not None for b in space.blocks] == [True, False, True, True, True]
    assert space.num_features == 4 * 8 * 4 and space.classifier.in_features == space.num_features


@pytest.mark.parametrize('stem, size, feature_hw', [('cifar', 16, 2), ('imagenet', 32, 1)])
def test_every_candidate_of_every_block_runs_with_the_right_shape(stem, size, feature_hw):
    space = tiny(depths=(2, 1, 1, 1), stem=stem, in_channels=1)
    x = torch.randn(2, 1, size, size)
    for k, name in enumerate(NAMES):
        net = space.freeze(arch_from_indices([k] * space.num_blocks))
        shapes = []
        handles = [b.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for b in net.blocks]
        out = net(x)
        for handle in handles:
            handle.remove()
        features = net.features(x)
        first = size if stem == 'cifar' else size // 4
        expected = [(2, 16, first, first), (2, 16, first, first), (2, 32, first // 2, first // 2),
                    (2, 64, first // 4, first // 4), (2, 128, first // 8, first // 8)]
        assert shapes == expected, name
        assert out.shape == (2, 5) and features.shape == (2, 128, feature_hw, feature_hw)
        assert all(isinstance(m, type(space.blocks[0].choice[name])) for m in (b.choice for b in net.blocks))


@pytest.mark.parametrize('strategy', [RandomOneShot, DARTS])
def test_downsample_is_shared_and_counted_once_in_the_supernet(strategy):
    space = tiny()
    projections = [block.downsample for block in space.blocks]
    params_before = sum(p.numel() for p in space.parameters())
    strategy().mutate_model(space)
    assert [block.downsample for block in space.blocks] == projections  # the same objects, not copies
    weights = [p for name, p in space.named_parameters() if not name.endswith('_arch_alpha')]  # DARTS adds alphas
    assert sum(p.numel() for p in weights) == params_before
    projection_ids = {id(p) for d in projections for p in d.parameters()}
    assert not projection_ids & {id(p) for b in space.blocks for p in b.choice.parameters()}
    calls = []
    for projection in projections:
        projection.register_forward_hook(lambda *args: calls.append(1))
    if strategy is RandomOneShot:
        force_path(space, arch_from_indices([3, 0, 1, 2]))
    space(torch.randn(2, 3, 16, 16))
    assert len(calls) == len(projections)  # applied once per block, whatever the candidates do


def test_without_sharing_every_candidate_has_its_own_projection():
    shared, private = tiny(), tiny(share_downsample=False)
    projection = sum(p.numel() for p in shared.blocks[1].downsample.parameters())
    extra = sum(p.numel() for p in private.parameters()) - sum(p.numel() for p in shared.parameters())
    per_block = [sum(p.numel() for p in b.downsample.parameters()) for b in shared.blocks]
    assert projection > 0 and extra == 3 * sum(per_block)  # 4 projections instead of 1 in each block
    assert all(b.downsample is None for b in private.blocks)
    assert private.freeze(arch_from_indices([1, 2, 3, 0]))(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def test_random_one_shot_path_trains():
    space = tiny()
    RandomOneShot().mutate_model(space)
    rng = random.Random(0)
    arch = arch_from_indices([rng.randrange(4) for _ in range(space.num_blocks)])
    force_path(space, arch)
    assert {(m.label, m._sampled) for m in space.modules() if isinstance(m, BaseSuperNetModule)} == set(arch.items())
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 16, 16, generator=generator), torch.randint(0, 5, (8,), generator=generator))
               for _ in range(2)]
    optimizer = torch.optim.SGD(space.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(12):
        x, y = batches[step % 2]
        loss = F.cross_entropy(space(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-2:]) < 0.5 * sum(losses[:2])


def test_freeze_gives_the_supernet_path_exactly():
    space = tiny(depths=(2, 1, 1, 1))
    randomize_batchnorm(space, 3)
    supernet = copy.deepcopy(space)
    arch = arch_from_indices([2, 3, 1, 0, 3])
    net = space.freeze(arch)
    assert not any(isinstance(m, (LayerChoice, BaseSuperNetModule)) for m in net.modules())
    assert all(isinstance(b, ResNeStChoiceBlock) for b in net.blocks)
    RandomOneShot().mutate_model(supernet)
    force_path(supernet, arch)
    net.eval(), supernet.eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(net(x), supernet(x), atol=1e-5)
    other = space.freeze(arch_from_indices([0, 3, 1, 0, 3]))
    assert not torch.allclose(other.eval()(x), net(x), atol=1e-3)  # a different candidate changes the output


def _direct_count(net: nn.Module, x: torch.Tensor) -> int:
    """Conv, BN, ReLU and Linear FLOPs of one image from the tensors a forward sees (NNI's conventions)."""
    total = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            macs = module.in_channels // module.groups * math.prod(module.kernel_size) + (module.bias is not None)
            total.append(output[0].numel() * macs)
        elif isinstance(module, nn.BatchNorm2d):
            total.append(2 * (1 + module.affine) * inputs[0][0].numel())
        elif isinstance(module, nn.ReLU):
            total.append(inputs[0][0].numel())
        elif isinstance(module, nn.Linear):
            total.append(module.out_features * (module.in_features + 1))

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    net.eval()(x)
    for handle in handles:
        handle.remove()
    return sum(total)


@pytest.mark.parametrize('kwargs, shape, indices, golden', [
    ({}, (1, 3, 32, 32), [3, 0, 1, 2], (3594291, 34815)),
    ({'stem': 'imagenet', 'in_channels': 1, 'depths': (2, 1, 1, 1)}, (1, 1, 64, 64), [1, 2, 3, 3, 0],
     (1193553, 34827)),
    # odd sizes (20 -> 10 -> 5 -> 3: ceil-mode pooling in the projection), one projection per candidate
    ({'share_downsample': False}, (1, 3, 20, 20), [0, 1, 2, 3], (1428365, 34353)),
])
def test_profiler_golden_numbers_match_a_direct_count(kwargs, shape, indices, golden):
    space = tiny(**kwargs)
    profiler = FlopsParamsProfiler(space, torch.randn(*shape))  # batch 1 in training mode must work
    arch = arch_from_indices(indices)
    result = profiler.profile(arch)
    net = space.freeze(arch)
    assert (result.flops, result.params) == golden
    assert result.flops == _direct_count(net, torch.randn(*shape))
    assert result.params == sum(p.numel() for p in net.parameters())


def test_arch_indices_round_trip_and_registry():
    arch = arch_from_indices(PINAS_CLS_INDICES)
    assert len(arch) == 16 and arch['block0'] == '2s2x40d' and arch['block1'] == '1s1x64d'
    assert indices_from_arch(arch) == list(PINAS_CLS_INDICES)
    assert 'resnest' in list_spaces() and isinstance(create_space('resnest', base_width=4, depths=(1, 1, 1, 1)),
                                                     ResNeStSpace)


@pytest.mark.parametrize('kwargs, message', [
    ({'base_width': 0}, 'base_width must be a positive integer'),
    ({'base_width': 4.0}, 'base_width must be a positive integer'),
    ({'num_classes': True}, 'num_classes must be a positive integer'),
    ({'depths': (1, 1, 1)}, 'depths must be 4 positive integers'),
    ({'depths': (1, 0, 1, 1)}, 'depths must be 4 positive integers'),
    ({'depths': '1111'}, 'depths must be 4 positive integers'),
    ({'stem': 'mnist'}, "stem must be 'cifar'"),
    ({'share_downsample': 1}, 'share_downsample must be True or False'),
    ({'attention_floor': 0}, 'attention_floor must be a positive integer'),
])
def test_bad_space_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_bad_archs():
    space = tiny()
    with pytest.raises(ValueError, match='lacks 1 of the 4 block labels'):
        space.freeze(arch_from_indices([0, 1, 2]))
    with pytest.raises(ValueError, match='unknown candidates'):
        space.freeze(dict(arch_from_indices([0, 1, 2, 3]), block2='3s1x64d'))
    with pytest.raises(TypeError, match='expected an arch dict'):
        space.freeze([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r'integers in 0\.\.3'):
        arch_from_indices([0, 4])
    with pytest.raises(ValueError, match='non-empty sequence'):
        arch_from_indices([])
    with pytest.raises(ValueError, match='no block labels'):
        indices_from_arch({'cell/1_0': 'none'})


@pytest.mark.slow
def test_full_size_resnest50_path_matches_the_paper():
    """Every block 2s1x64d is ResNeSt-50: 27.5M parameters (Pi-NAS Table 1); Pi-NAS-cls 27.1M (Table 2)."""
    space = ResNeStSpace()
    count = lambda indices: sum(p.numel() for p in space.freeze(arch_from_indices(indices)).parameters())
    assert round(count([1] * 16) / 1e6, 1) == 27.5
    assert abs(count(PINAS_CLS_INDICES) / 1e6 - 27.1) < 0.1
