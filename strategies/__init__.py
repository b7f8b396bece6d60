"""Label-free NAS strategies, each an NNI one-shot strategy (``NasExperiment(space, evaluator, strategy)``)."""
from .rlnas import RLNAS, RLNASModule

__all__ = ['RLNAS', 'RLNASModule']
