"""NNI ``ModelSpace`` definitions, registered by name (``create_space`` / ``list_spaces``)."""
from __future__ import annotations

from typing import Any, Callable

from nni.nas.nn.pytorch import ModelSpace

from .darts import DartsSpace
from .mobilenet import MobileNetSpace
from .nasbench201 import CellDAG, NasBench201Space
from .resnest import ResNeStSpace

__all__ = ['CellDAG', 'DartsSpace', 'MobileNetSpace', 'NasBench201Space', 'ResNeStSpace', 'create_space', 'list_spaces']

_SPACES: dict[str, Callable[..., ModelSpace]] = {
    'nasbench201': NasBench201Space,
    'darts': DartsSpace,
    'mobilenet': MobileNetSpace,
    'resnest': ResNeStSpace,
}


def list_spaces() -> list[str]:
    """Names accepted by :func:`create_space`."""
    return sorted(_SPACES)


def create_space(name: str, **kwargs: Any) -> ModelSpace:
    """Build a registered search space by name, e.g. ``create_space('nasbench201', channels=8)``."""
    if name not in _SPACES:
        raise ValueError(f'Unknown search space {name!r}. Available spaces: {", ".join(list_spaces())}.')
    return _SPACES[name](**kwargs)
