"""The ``epoch`` / ``set_epoch`` protocol shared by datasets and samplers whose items depend on the epoch.

Lightning calls ``set_epoch`` on a loader's sampler and dataset before every epoch; an item drawn by an
:class:`EpochSelectable` is then a pure function of ``(seed, epoch, index)``, so a resumed run sees the same data.
"""
from __future__ import annotations

import logging

__all__ = ['EpochSelectable', 'check_epoch']

_logger = logging.getLogger(__name__)


def check_epoch(epoch: int) -> int:
    """Return ``epoch`` as an ``int``; raise ``ValueError`` if it is negative (epochs are 0-based)."""
    if epoch < 0:
        raise ValueError(f'epoch must be >= 0, got {epoch}.')
    return int(epoch)


class EpochSelectable:
    """Mixin: a read-only :attr:`epoch` (0 until :meth:`set_epoch`) and a validating :meth:`set_epoch`.

    What the epoch selects (views, jigsaw permutations, random labels, a shuffle order) is described by each class.
    """

    _epoch: int = 0

    @property
    def epoch(self) -> int:
        """The epoch whose items are drawn (0 until :meth:`set_epoch`)."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Draw the items of ``epoch`` (0-based) from now on; call before each epoch."""
        self._epoch = check_epoch(epoch)
