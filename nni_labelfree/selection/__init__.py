"""Selection of an architecture from a trained supernet: evolutionary search under FLOPs/params constraints."""
from .constraints import *  # noqa: F401,F403
from .constraints import __all__ as _constraints_all
from .evolution import *  # noqa: F401,F403
from .evolution import __all__ as _evolution_all

__all__ = list(_evolution_all) + list(_constraints_all)
# Pi-NAS's linear-evaluation search and its label-free alternative.
from .linear_eval import *  # noqa: F401,F403,E402
from .linear_eval import __all__ as _linear_eval_all  # noqa: E402

__all__ += list(_linear_eval_all)
