"""Ranking metrics for label-free NAS: correlation of a proxy score with ground truth."""
from .correlation import *  # noqa: F401,F403
from .correlation import __all__ as _correlation_all

__all__ = list(_correlation_all)
