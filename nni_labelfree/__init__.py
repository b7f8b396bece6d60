"""nni-labelfree: label-free neural architecture search as NNI 3.0 one-shot strategies.

Methods: RLNAS (random labels + angle), with UnNAS, UnrealNAS and Pi-NAS to follow.
Import strategies from :mod:`nni_labelfree.strategies` and spaces from :mod:`nni_labelfree.search_spaces`.
"""
import warnings

# Every `import nni.nas...` warns about torch's Buffer class; harmless (see docs, NNI 3.0 breakage 1).
warnings.filterwarnings('ignore', message=r'.*is found to be not a nn\.Module', category=RuntimeWarning)

__version__ = '0.1.0'
