"""Helpers shared by the label-free one-shot strategies (RLNAS, Pi-NAS)."""
from __future__ import annotations

import logging
from typing import Iterator

from nni.nas.oneshot.pytorch.strategy import OneShotStrategy
from nni.nas.space import RawFormatModelSpace

__all__ = ['ranked_models']

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
