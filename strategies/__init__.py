"""Label-free NAS strategies, each an NNI one-shot strategy (``NasExperiment(space, evaluator, strategy)``)."""
from .rlnas import RLNAS, RLNASModule
from .unnas import UnNAS, UnNASModule

__all__ = ['RLNAS', 'RLNASModule', 'UnNAS', 'UnNASModule']
from .sgas import SGAS, SGASModule  # noqa: E402

__all__ += ['SGAS', 'SGASModule']
from .unrealnas import UnrealNAS  # noqa: E402

__all__ += ['UnrealNAS']
from .pinas import PiNAS, PiNASModule  # noqa: E402

__all__ += ['PiNAS', 'PiNASModule']
