"""Helpers shared by the label-free one-shot strategies (RLNAS, Pi-NAS)."""
from __future__ import annotations

import logging
from typing import Iterator

from nni.nas.oneshot.pytorch.strategy import OneShotStrategy
from nni.nas.space import RawFormatModelSpace

__all__ = ['RankedOneShot', 'ranked_models']

_logger = logging.getLogger(__name__)


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
