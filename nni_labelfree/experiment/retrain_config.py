"""The retraining configuration: one flat, documented set of keys, and the papers' recipes as presets.

Layers merge as in :mod:`nni_labelfree.experiment.config` (later wins; unknown keys refused with the valid list):
the dataclass defaults, then the preset's values, then every key the user set (``--set``/flags, then the NNI
parameters of a trial). ``preset`` and ``space`` themselves may come from any layer; the space defaults to the one
the architecture belongs to, the preset to that space's paper recipe.

Presets (``PRESETS``):

- ``nb201``: NAS-Bench-201's training of every cell (Dong & Yang, ICLR 2020): the cell space at C=16, N=5, 200
  epochs, SGD lr 0.1 Nesterov momentum 0.9, weight decay 5e-4, cosine to 0, batch 256, random crop + flip.
- ``darts``: DARTS's CIFAR-10 evaluation (Liu et al., ICLR 2019; used by RLNAS, UnNAS, UnrealNAS): 20 cells x 36
  channels, 600 epochs, batch 96, SGD lr 0.025 momentum 0.9, weight decay 3e-4, cosine to 0, cutout 16, auxiliary
  head weight 0.4, drop-path 0.2 (ramped linearly over the epochs), gradient clipping at 5.
- ``cpu``: the same pipeline at CPU size (width 8, one cell per stage or 5 DARTS cells, 2,000 training images,
  10 epochs): minutes on one core; DARTS keeps its auxiliary head, drop-path and cutout so every piece runs.

Validation: ``val_fraction`` of the training images (a random subset drawn with ``split_seed``, the same for every
training ``seed``) are held out for the per-epoch validation accuracy; the model trains on the rest. The final
accuracy is measured on the dataset's test split. ``val_fraction=0`` trains on every training image and reports
the training accuracy per epoch instead.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from nni_labelfree.experiment.config import _check_number, merge_layers
from nni_labelfree.experiment.retrain_arch import SPACE_NAMES, load_architecture

__all__ = ['RetrainConfig', 'PRESETS', 'DEFAULT_PRESETS', 'LABELLED_SOURCES', 'preset_values',
           'resolve_retrain_config']

_logger = logging.getLogger(__name__)

LABELLED_SOURCES = ('cifar10', 'cifar100', 'imagefolder')
DEFAULT_PRESETS = {'nasbench201': 'nb201', 'darts': 'darts'}

# A preset is a training recipe plus the paper network of each space: the recipe applied to the other space keeps its
# training settings and takes that space's own paper network.
_NB201_TRAINING = dict(epochs=200, batch_size=256, learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                       min_learning_rate=0.0, cutout=0, grad_clip=None)
_DARTS_TRAINING = dict(epochs=600, batch_size=96, learning_rate=0.025, momentum=0.9, nesterov=False,
                       weight_decay=3e-4, min_learning_rate=0.0, cutout=16, grad_clip=5.0)
_NETWORKS = {'nasbench201': dict(channels=16, cells_per_stage=5, auxiliary_weight=0.0, drop_path=0.0),
             'darts': dict(channels=36, num_cells=20, auxiliary_weight=0.4, drop_path=0.2)}
_CPU = {'nasbench201': dict(cells_per_stage=1), 'darts': dict(num_cells=5)}
_CPU_COMMON = dict(channels=8, epochs=10, batch_size=64, num_images=2000, test_images=1000, learning_rate=0.05)
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    'nb201': {space: {**_NB201_TRAINING, **net} for space, net in _NETWORKS.items()},
    'darts': {space: {**_DARTS_TRAINING, **net} for space, net in _NETWORKS.items()},
    'cpu': {'nasbench201': {**_NB201_TRAINING, **_NETWORKS['nasbench201'], **_CPU_COMMON, **_CPU['nasbench201']},
            'darts': {**_DARTS_TRAINING, **_NETWORKS['darts'], **_CPU_COMMON, **_CPU['darts']}},
}
"""Preset name -> space -> values."""


@dataclass
class RetrainConfig:
    """All settings of one retraining run. Defaults are the ``nb201`` preset's; see the module docstring."""
    # --- what to train ----------------------------------------------------------------------------------------------
    arch: Any = None                    # arch.json, search/trial output folder, NB201 string or DARTS genotype
    space: str | None = None            # nasbench201 | darts; None: the space the architecture belongs to
    preset: str | None = None           # nb201 | darts | cpu; None: the space's paper recipe (nb201 / darts)
    channels: int = 16                  # first-stage width (NB201: C=16; DARTS: 36 initial channels)
    cells_per_stage: int = 5            # NAS-Bench-201: cells per stage (paper: 5)
    num_cells: int = 20                 # DARTS: cells in all, reductions at 1/3 and 2/3 (paper: 20)
    auxiliary_weight: float = 0.0       # DARTS: weight of the auxiliary head's loss (paper: 0.4; 0: no head)
    drop_path: float = 0.0              # DARTS: final drop-path probability, ramped linearly from 0 (paper: 0.2)
    # --- data (real labels) -------------------------------------------------------------------------------------------
    data: str = 'cifar10'               # cifar10 | cifar100 | imagefolder (<root>/{train,test}/<class>/<image>)
    data_root: str | None = None        # dataset root (torchvision CIFAR files) or image folder / .tar.gz
    download: bool = False              # let torchvision download CIFAR (needs internet)
    num_images: int | None = None       # training-split images used (train + val); None: all
    test_images: int | None = None      # test-split images used; None: all
    val_fraction: float = 0.1           # held-out share of the training images for per-epoch validation (0: none)
    split_seed: int = 0                 # seeds the image subsets and the validation split (not the training)
    image_size: int = 32                # images are resized to this size
    cutout: int = 0                     # side of the cutout square in pixels (DARTS: 16; 0: off)
    # --- training ---------------------------------------------------------------------------------------------------
    epochs: int = 200
    batch_size: int = 256
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    min_learning_rate: float = 0.0      # floor of the cosine schedule
    grad_clip: float | None = None      # gradient-norm clipping (DARTS: 5); None: off
    num_workers: int = 0                # DataLoader workers
    accelerator: str = 'auto'           # Lightning accelerator: auto | cpu | gpu (one device per run)
    max_minutes: float | None = None    # wall-clock budget of training (Lightning max_time); None: no limit
    num_threads: int | None = None      # torch CPU threads (None: torch's default)
    # --- bookkeeping ------------------------------------------------------------------------------------------------
    seed: int = 0                       # seeds weights, augmentation, drop-path and the batch order
    output_dir: str | None = None       # where artifacts go (trials: NNI's trial output dir)
    resume: bool = True                 # continue from the newest readable checkpoints/search_epoch*.ckpt of the
                                        # output folder (written every epoch); false: delete those and start over

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        """Write the resolved configuration as JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + '\n')


_CHOICES = {'data': LABELLED_SOURCES, 'accelerator': ('auto', 'cpu', 'gpu'), 'space': tuple(SPACE_NAMES),
            'preset': tuple(PRESETS)}
_POSITIVE = ('channels', 'cells_per_stage', 'num_cells', 'image_size', 'epochs', 'batch_size')
_OPTIONAL_POSITIVE = ('num_images', 'test_images', 'num_threads')
_NON_NEGATIVE = ('seed', 'split_seed', 'num_workers', 'cutout')
_BOOLS = ('nesterov', 'download', 'resume')
# (name, may be None, must be > 0 rather than >= 0)
_FLOATS = (('learning_rate', False, True), ('momentum', False, False), ('weight_decay', False, False),
           ('min_learning_rate', False, False), ('auxiliary_weight', False, False), ('drop_path', False, False),
           ('val_fraction', False, False), ('grad_clip', True, True), ('max_minutes', True, True))


def preset_values(preset: str, space: str) -> dict[str, Any]:
    """The values a preset sets for a space (a copy)."""
    if preset not in PRESETS:
        raise ValueError(f'Unknown preset {preset!r}; expected one of {", ".join(PRESETS)} (nb201: NAS-Bench-201\'s '
                         '200-epoch recipe, darts: DARTS\'s 600-epoch recipe, cpu: a few minutes on a CPU).')
    return dict(PRESETS[preset][space])


def resolve_retrain_config(*layers: Mapping[str, Any] | None) -> RetrainConfig:
    """Merge layers (later wins) over the preset over the defaults; check the keys, values and architecture.

    The architecture is read here (:func:`~nni_labelfree.experiment.retrain_arch.load_architecture`), so a missing
    or malformed file, or one of another space, fails before any data is loaded.
    """
    merged = merge_layers(layers, RetrainConfig, 'retrain')
    if merged.get('arch') in (None, ''):
        raise ValueError('No architecture to retrain. Pass --arch (trials: --set arch=...) with an arch.json, a search '
                         'output folder, a NAS-Bench-201 string or a DARTS genotype.')
    if not isinstance(merged['arch'], (str, Mapping)):
        raise ValueError(f'arch must be a path, a string or a genotype mapping, got {merged["arch"]!r}.')
    space = merged.get('space')
    if space is not None and space not in SPACE_NAMES:
        raise ValueError(f'Configuration space={space!r} is not one of {", ".join(SPACE_NAMES)}.')
    space = load_architecture(merged['arch'], space).space
    preset = merged.get('preset') or DEFAULT_PRESETS[space]
    config = RetrainConfig(**{**preset_values(preset, space), **merged, 'space': space, 'preset': preset})
    _validate(config)
    return config


def _validate(config: RetrainConfig) -> None:
    for key, allowed in _CHOICES.items():
        if getattr(config, key) not in allowed:
            hint = (' noise has no labels; retraining needs real ones.' if getattr(config, key) == 'noise' else '')
            raise ValueError(f'Configuration {key}={getattr(config, key)!r} is not one of {", ".join(allowed)}.{hint}')
    for key in _POSITIVE + _OPTIONAL_POSITIVE + _NON_NEGATIVE:
        value, floor = getattr(config, key), 0 if key in _NON_NEGATIVE else 1
        if value is None and key in _OPTIONAL_POSITIVE:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < floor:
            kind = 'a non-negative integer' if floor == 0 else 'a positive integer'
            raise ValueError(f'Configuration {key} must be {kind}{" or null" if key in _OPTIONAL_POSITIVE else ""}, '
                             f'got {value!r}.')
    for key in _BOOLS:
        if not isinstance(getattr(config, key), bool):
            raise ValueError(f'Configuration {key} must be true or false, got {getattr(config, key)!r}.')
    for key, optional, positive in _FLOATS:
        _check_number(key, getattr(config, key), optional, positive)
    _check_ranges(config)


def _check_ranges(config: RetrainConfig) -> None:
    if config.val_fraction >= 1 or config.drop_path >= 1:
        raise ValueError(f'val_fraction and drop_path must lie in [0, 1), got {config.val_fraction} and '
                         f'{config.drop_path}.')
    if config.space == 'nasbench201' and (config.auxiliary_weight or config.drop_path):
        raise ValueError('auxiliary_weight and drop_path belong to the DARTS network; the NAS-Bench-201 network has '
                         'neither. Set auxiliary_weight=0 and drop_path=0 (the nb201 preset does).')
    if config.space == 'darts' and config.num_cells < 3:
        raise ValueError(f'num_cells must be at least 3 for the DARTS network (two reduction cells), got '
                         f'{config.num_cells}.')
    if config.data == 'imagefolder' and not config.data_root:
        raise ValueError('data=imagefolder needs data_root: a folder (or .tar.gz) with train/<class>/ and '
                         'test/<class>/ subfolders.')
    if config.cutout > config.image_size:
        raise ValueError(f'cutout ({config.cutout} px) must not exceed image_size ({config.image_size} px).')
