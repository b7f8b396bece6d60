"""Label-free NAS strategies, each an NNI one-shot strategy (``NasExperiment(space, evaluator, strategy)``)."""
from .rlnas import RLNAS, RLNASModule
from .unnas import UnNAS, UnNASModule

__all__ = ['RLNAS', 'RLNASModule', 'UnNAS', 'UnNASModule']
