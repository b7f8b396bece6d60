"""Helpers shared by the label-free one-shot strategies (RLNAS, Pi-NAS)."""
from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from nni.nas.oneshot.pytorch.strategy import OneShotStrategy
from nni.nas.space import RawFormatModelSpace

__all__ = ['RankedOneShot', 'ranked_models', 'rng_state_to_plain', 'rng_state_from_plain', 'use_channels_last']

_logger = logging.getLogger(__name__)


def _channels_last_input(module: torch.nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous(memory_format=torch.channels_last) if torch.is_tensor(a) and a.dim() == 4 else a
                 for a in args)


def use_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Store ``model``'s 4-D parameters and buffers channels-last and feed it 4-D inputs that way, in place.

    Only memory layout changes (values, state dicts and checkpoints are the same in either layout); oneDNN's CPU
    convolutions run about twice as fast on a NAS-Bench-201 supernet in this layout (``bench/step_time.py``,
    ``bench/pinas_step_time.py``). The input conversion is a forward pre-hook on ``model``, registered once.
    """
    model.to(memory_format=torch.channels_last)
    if not getattr(model, '_channels_last_hooked', False):
        model.register_forward_pre_hook(_channels_last_input)
        model._channels_last_hooked = True
    return model


def ranked_models(strategy: OneShotStrategy, limit: int | None = 1) -> Iterator[RawFormatModelSpace]:
    """The first ``limit`` (None or 0: 1) architectures of the module's ranked ``search_result``, frozen.

    Runs the module's ``export()`` first when no ranking exists yet; the ranking is best first, as ``select`` of
    the strategy produced it (RLNAS: Hu et al., ICLR 2021; Pi-NAS: Peng et al., ICCV 2021).
    """
    module = strategy.oneshot_module
    module.set_model(strategy.supernet)
    if module.search_result is None:
        module.export()
    for arch, _ in module.search_result[:limit or 1]:
        yield strategy.model_space.freeze(arch)


class RankedOneShot:
    """Mixin for a seeded one-shot strategy whose module exports a ranked ``search_result`` (put it before NNI's
    strategy class): :meth:`list_models` reads the ranking, :meth:`state_dict` also records ``self.seed``."""

    def list_models(self, sort: bool = True, limit: int | None = 1) -> Iterator[RawFormatModelSpace]:
        """The ``limit`` best architectures (RLNAS: largest angles; Pi-NAS: best selection fitness), best first,
        as frozen models."""
        return ranked_models(self, limit)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state['seed'] = self.seed
        return state


def rng_state_to_plain(rng: np.random.RandomState) -> dict[str, Any]:
    """A ``RandomState`` state as a tensor and plain values (loadable with ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached_gaussian = rng.get_state(legacy=True)
    return {'name': str(name), 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
            'has_gauss': int(has_gauss), 'cached_gaussian': float(cached_gaussian)}


def rng_state_from_plain(state: Mapping[str, Any]) -> tuple:
    """Inverse of :func:`rng_state_to_plain`, for ``RandomState.set_state``."""
    keys = state['keys'].numpy().astype(np.uint32)
    return state['name'], keys, int(state['pos']), int(state['has_gauss']), float(state['cached_gaussian'])
