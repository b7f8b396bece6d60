"""NAS-Bench-201 arch-string conversion, structural baselines and accuracy-table lookup."""
from .nasbench201 import *  # noqa: F401,F403
from .nasbench201 import __all__ as _nasbench201_all

__all__ = list(_nasbench201_all)
