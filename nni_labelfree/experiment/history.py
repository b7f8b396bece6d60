"""The per-epoch metric history shared by a search's and a retraining's Lightning callbacks.

Each epoch becomes one metric dict: kept in :attr:`EpochHistory.history` (saved into every checkpoint, so a resumed
run's ``metrics.json`` still lists every epoch), logged, and passed to a reporter such as
``nni.report_intermediate_result``.
"""
from __future__ import annotations

import logging
from typing import Callable

import pytorch_lightning as pl

__all__ = ['EpochHistory', 'Reporter']

_logger = logging.getLogger(__name__)

Reporter = Callable[[dict], None]


class EpochHistory(pl.Callback):
    """Base callback: :meth:`publish` records an epoch's metrics; the history is part of the callback's state.

    Subclasses keep their own checkpoint key (Lightning keys a callback's state by its class name).

    Parameters
    ----------
    reporter
        Called with each epoch's metric dict, or None.
    """

    def __init__(self, reporter: Reporter | None = None):
        self.reporter = reporter
        self.history: list[dict] = []

    def publish(self, metrics: dict) -> None:
        """Append ``metrics`` (with an ``epoch`` key) to the history, log it (subclass's module logger), report it."""
        self.history.append(metrics)
        logging.getLogger(type(self).__module__).info(
            'epoch %d: %s', metrics['epoch'], {k: round(v, 4) for k, v in metrics.items()})
        if self.reporter is not None:
            self.reporter(metrics)

    def state_dict(self) -> dict:
        return {'history': [dict(m) for m in self.history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [dict(m) for m in state_dict.get('history', [])]
