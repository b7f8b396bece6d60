"""Channels-last supernets (RLNAS, Pi-NAS): the same function in another memory layout, checkpoints interchangeable."""
import torch

from nni_labelfree.search_spaces import NasBench201Space
from nni_labelfree.strategies import RLNAS
from nni_labelfree.strategies.common import use_channels_last
from nni_labelfree.strategies.pinas import PiNAS


def _conv_weights(model):
    return [p for p in model.parameters() if p.dim() == 4]


def _route(supernet, arch):
    for module in supernet.modules():
        if hasattr(module, 'resample') and module is not supernet:
            module.resample(memo=dict(arch))


def test_use_channels_last_keeps_outputs_and_state_and_hooks_once():
    torch.manual_seed(0)
    plain = NasBench201Space(channels=8, cells_per_stage=1)
    RLNAS(channels_last=False).mutate_model(plain)
    converted = NasBench201Space(channels=8, cells_per_stage=1)
    RLNAS(channels_last=False).mutate_model(converted)
    converted.load_state_dict(plain.state_dict())
    use_channels_last(use_channels_last(converted))
    assert all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in _conv_weights(converted) if p.shape[2] > 1)
    assert len(converted._forward_pre_hooks) == 1
    arch = {'cell/1_0': 'nor_conv_3x3', 'cell/2_0': 'nor_conv_1x1', 'cell/2_1': 'avg_pool_3x3',
            'cell/3_0': 'skip_connect', 'cell/3_1': 'nor_conv_3x3', 'cell/3_2': 'nor_conv_3x3'}
    _route(plain, arch)
    _route(converted, arch)
    x = torch.randn(4, 3, 32, 32)
    plain.eval(), converted.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), converted(x), atol=1e-5)
    state = converted.state_dict()
    fresh = NasBench201Space(channels=8, cells_per_stage=1)
    RLNAS(channels_last=False).mutate_model(fresh)
    fresh.load_state_dict(state)  # a channels-last checkpoint loads into a default-layout supernet, values equal
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), plain.state_dict().values()))


def test_rlnas_and_pinas_supernets_are_channels_last_by_default_and_can_opt_out():
    for make in (lambda **kw: RLNAS(**kw), lambda **kw: PiNAS(**kw)):
        on = make().mutate_model(NasBench201Space(channels=8, cells_per_stage=1))
        off = make(channels_last=False).mutate_model(NasBench201Space(channels=8, cells_per_stage=1))
        wide = [p for p in _conv_weights(on) if p.shape[2] > 1]
        assert wide and all(p.is_contiguous(memory_format=torch.channels_last) for p in wide)
        assert all(p.is_contiguous() for p in _conv_weights(off))


def test_search_config_sets_the_layout_and_a_layout_change_does_not_block_resume():
    from nni_labelfree.experiment.config import resolve_config
    from nni_labelfree.experiment.search import _RESUME_FREE_KEYS, build_search
    for strategy in ('rlnas', 'pinas'):
        for layout in (True, False):
            config = resolve_config({'strategy': strategy, 'data': 'noise', 'channels': 4, 'num_images': 40,
                                     'batch_size': 8, 'channels_last': layout})
            parts = build_search(config)
            assert parts.strategy.channels_last is layout
            wide = [p for p in _conv_weights(parts.model) if p.shape[2] > 1]
            assert all(p.is_contiguous(memory_format=torch.channels_last) is layout for p in wide)
    assert 'channels_last' in _RESUME_FREE_KEYS
