"""NNI's profiler on fixed DARTS and MobileNet architectures: golden numbers, checked against an independent count.

The independent count runs the frozen network once with forward hooks on every leaf layer and sums, from the
tensors the forward really sees, multiply-accumulates of convolutions (``out_elements * in_channels / groups * k^2``)
and linear layers (``out * (in + bias)``), plus NNI's conventions for BatchNorm (``2 * (1 + affine)`` per element)
and activations (one per element). Parameters are ``sum(p.numel())`` of the frozen network.
"""
import math

import pytest
import torch
from torch import nn

from nni_labelfree.search_spaces import DartsSpace, MobileNetSpace
from nni_labelfree.search_spaces.darts import arch_from_genotype
from nni_labelfree.selection import ProfilerConstraint

DARTS_V2 = {  # DARTS (second order), Liu et al. 2019, appendix
    'normal': [('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
               ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)],
    'reduce': [('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1),
               ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)],
}
PROXYLESS_GPU = {  # ProxylessNAS-GPU (Cai et al. 2019) in this space: the skips stand for its shorter stages
    's1': ['k5_e3', 'skip', 'skip', 'skip'], 's2': ['k7_e3', 'k3_e3', 'skip', 'skip'],
    's3': ['k7_e6', 'k5_e3', 'skip', 'skip'], 's4': ['k5_e6', 'k3_e3', 'k5_e3', 'skip'],
    's5': ['k7_e6', 'k7_e6', 'k7_e6', 'k5_e6'], 's6': ['k7_e6'],
}
MOBILENET_ARCH = {'s1_b0': 'k7_e6', 's1_b1': 'skip', 's2_b0': 'k3_e3', 's2_b1': 'k5_e6', 's3_b0': 'k5_e3',
                  's3_b1': 'k3_e6', 's4_b0': 'k7_e3', 's4_b1': 'skip', 's5_b0': 'k3_e6', 's5_b1': 'k7_e6',
                  's6_b0': 'k5_e6'}  # every candidate, in a 2-2-2-2-2-1 space
_ACTIVATIONS = (nn.ReLU, nn.ReLU6)

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def hook_count(net: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """``{'macs': conv + linear, 'flops': macs + BN + activations}`` of one image, from forward hooks."""
    macs, others = [], []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            macs.append(output[0].numel() * (per_output + (module.bias is not None)))
        elif isinstance(module, nn.Linear):
            macs.append(module.out_features * (module.in_features + (module.bias is not None)))
        elif isinstance(module, nn.BatchNorm2d):
            others.append(2 * (1 + module.affine) * inputs[0][0].numel())
        elif isinstance(module, _ACTIVATIONS):
            others.append(inputs[0][0].numel())

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    try:
        net.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return {'macs': sum(macs), 'flops': sum(macs) + sum(others)}


def _profile_and_count(space, arch, shape, macs: bool):
    """Profiler (FLOPs with BN/activations, params, optionally MACs) and the hook count of the same network.

    Each profiler traces the space (seconds on DARTS), so the MAC-only count is taken in one case per space.
    """
    full = ProfilerConstraint(space, torch.randn(*shape), max_flops=1e15).value(arch)
    profiled = [full['flops'], full['params']]
    if macs:
        profiled.append(ProfilerConstraint(space, torch.randn(*shape), max_flops=1e15, count_normalization=False,
                                           count_activation=False).value(arch)['flops'])
    net = space.freeze(arch)
    counted = hook_count(net, torch.randn(*shape))
    counted_all = (counted['flops'], sum(p.numel() for p in net.parameters()), counted['macs'])
    return tuple(profiled), counted_all[:len(profiled)]


@pytest.mark.parametrize('kwargs, shape, golden', [
    (dict(width=4, num_cells=3, affine=True), (1, 3, 32, 32), (1_987_210, 3_098, 1_442_442)),
    (dict(width=4, num_cells=3, stem='imagenet'), (1, 3, 64, 64), (179_722, 2_472)),
], ids=['cifar', 'imagenet-stem'])
def test_darts_profiler_matches_golden_and_hook_count(kwargs, shape, golden):
    """(FLOPs, params[, MACs]) of DARTS-V2's genotype; ``'none'`` edges cost nothing, pools count no FLOPs."""
    space = DartsSpace(**kwargs)
    profiled, counted = _profile_and_count(space, arch_from_genotype(DARTS_V2), shape, macs=len(golden) == 3)
    assert profiled == golden
    assert counted == golden


@pytest.mark.parametrize('kwargs, shape, golden', [
    (dict(width_mult=0.25, stage_depths=(2, 2, 2, 2, 2, 1), num_classes=10, stem='cifar', channel_divisor=4),
     (1, 3, 32, 32), (12_419_050, 255_430, 10_797_034)),
    (dict(width_mult=0.25, stage_depths=(2, 2, 2, 2, 2, 1), num_classes=10, stem='imagenet', channel_divisor=4),
     (1, 3, 64, 64), (4_109_482, 255_430)),
], ids=['cifar', 'imagenet-stem'])
def test_mobilenet_profiler_matches_golden_and_hook_count(kwargs, shape, golden):
    """(FLOPs, params[, MACs]); the residual additions are not modules and neither count adds them."""
    profiled, counted = _profile_and_count(MobileNetSpace(**kwargs), MOBILENET_ARCH, shape, macs=len(golden) == 3)
    assert profiled == golden
    assert counted == golden


def test_mobilenet_proxyless_gpu_has_its_published_cost():
    """ProxylessNAS reports 465M MACs and 7.1M parameters for its GPU model at 224 px: the full space agrees."""
    space = MobileNetSpace()
    arch = {f'{stage}_b{i}': op for stage, ops in PROXYLESS_GPU.items() for i, op in enumerate(ops)}
    macs = ProfilerConstraint(space, torch.randn(1, 3, 224, 224), max_flops=1e15, count_normalization=False,
                              count_activation=False)
    value = macs.value(arch)
    net = space.freeze(arch)
    assert (value['flops'], value['params']) == (465_261_160, 7_074_328)
    assert hook_count(net, torch.randn(1, 3, 224, 224))['macs'] == value['flops']
    assert sum(p.numel() for p in net.parameters()) == 7_119_848  # the profiler leaves BN parameters out here
    assert value['flops'] < 475e6  # inside RLNAS's MobileNet limit
