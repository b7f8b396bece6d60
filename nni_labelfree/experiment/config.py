"""The search configuration: one flat, fully documented set of keys (pycls style).

Every key below is what a trial's NNI parameters, a YAML file's ``trialCommand`` arguments or the
``nni-labelfree search`` flags may set. Unknown keys are refused with the list of valid ones; the resolved
configuration is written next to the outputs (``config.json``) so a result can always be traced to its settings.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ['SearchConfig', 'resolve_config', 'merge_layers', 'parse_value', 'flatten_parameter_groups', 'STRATEGIES']

_logger = logging.getLogger(__name__)

STRATEGIES = ('rlnas', 'unnas', 'sgas', 'unrealnas', 'pinas')


@dataclass
class SearchConfig:
    """All settings of one label-free search. Defaults are the CPU quickstart's."""
    # --- what to search -------------------------------------------------------------------------------------
    strategy: str = 'rlnas'             # rlnas | unnas | sgas (true labels) | unrealnas | pinas
    space: str = 'nasbench201'          # a name from nni_labelfree.search_spaces.list_spaces()
    channels: int = 16                  # first-stage width of the space (NAS-Bench-201 paper: 16)
    cells_per_stage: int = 1            # searchable cells per stage (NAS-Bench-201 paper: 5)
    stage_depths: list | None = None    # resnest only: blocks per stage, 4 positive integers (Pi-NAS's ResNet-50
                                        # layout: [3, 4, 6, 3]; overrides cells_per_stage); null: cells_per_stage
                                        # blocks in every stage
    num_cells: int = 5                  # DARTS space only: cells in all, two of them reductions (paper: 8)
    task: str = 'rotation'              # UnNAS only: rotation | colorization | jigsaw | supervised (DARTS control)
    pretext_augment: bool = True        # UnNAS only: random crop (zero padding min(H, W) // 8) and flip of each image
                                        # before the pretext transform, new every epoch (the paper augments);
                                        # false: the images as they come
    arc_learning_rate: float | None = None  # UnNAS/SGAS/UnrealNAS: Adam lr of the alphas (None: the paper's value)
    # --- UnrealNAS and SGAS ------------------------------------------------------------------------------------
    unreal_data: str = 'rlgd'           # UnrealNAS: rlrd (`data` images, random labels) | rlgd (fractals) | rlrn (noise)
    algorithm: str = 'darts'            # UnrealNAS: darts | sgas
    unreal_classes: int | None = None   # UnrealNAS: random classes (replaces num_classes); None: the paper's count
                                        # (RLRD 1000, RLGD/RLRN 5000) scaled to keep its images per class
    sgas_criterion: int = 1             # SGAS: 1 (importance x certainty) | 2 (x stability)
    decision_warmup: int = 9            # SGAS: epochs before the first edge decision (SGAS paper: 9 of 50)
    decision_freq: int = 5              # SGAS: epochs between decisions (SGAS paper: 5)
    # --- Pi-NAS -----------------------------------------------------------------------------------------------
    temperature: float = 0.2            # InfoNCE temperature (paper: 0.2)
    queue_size: int | None = None       # negatives' queue (paper: 49152); None: queue_fraction of the training
                                        # images in whole batches (at least one, at most the paper's 49152)
    queue_fraction: float = 0.08        # Pi-NAS, with queue_size null: queue length / training images (MoCo on
                                        # CIFAR-10: 4096 / 50,000; a longer queue holds each image's own earlier key
                                        # as a negative, and at 0.5 the contrastive loss did not fall, README)
    ema_momentum: float = 0.999         # mean teacher's EMA momentum (paper: 0.999)
    teacher_precision: str = 'float32'  # Pi-NAS key passes: float32 | bfloat16 (autocast; faster on AVX512-BF16
                                        # CPUs) | float16 (GPUs); the paper trains in fp16
    queue_precision: str = 'float32'    # Pi-NAS queue storage and the products with it: float32 | bfloat16 (a 9%
                                        # faster step on an AVX512-BF16 CPU; sums and results stay float32)
    cross_path: bool = True             # ablations (paper Table 7): cross-path keys, mean teacher, queue negatives
    mean_teacher: bool = True
    negatives: bool = True
    selection: str = 'auto'             # Pi-NAS: auto (linear eval if the images have labels) | linear_eval | label_free
    held_out_fraction: float = 0.2      # Pi-NAS: share of the images held out (seeded) for the selection: the linear
                                        # classifier is measured, and the label-free criterion and cross-path probes
                                        # computed, on images neither the supernet nor the classifier trained on
    # --- images (labels are never read) ---------------------------------------------------------------------
    data: str = 'noise'                 # image source: cifar10 | cifar100 | imagefolder | noise
    data_root: str | None = None        # folder or .tar.gz for imagefolder; dataset root for cifar*
    data_split: str = 'train'           # subfolder of an imagefolder root / CIFAR split
    download: bool = False              # allow torchvision to download CIFAR (needs internet)
    num_images: int | None = 200        # images used (None: all); few images let the supernet memorise on CPU
    image_size: int = 32                # images are resized to this size
    # --- random labels --------------------------------------------------------------------------------------
    num_classes: int = 10               # random classes (RLNAS: the dataset's class count)
    label_mode: str = 'uniform_once'    # uniform_once | shuffle_once | uniform_per_iteration | shuffle_per_iteration
    # --- supernet training (RLNAS paper, NAS-Bench-201: SGD 0.025 cosine, nesterov, wd 5e-4, 250 epochs) -------
    epochs: int = 30                    # training epochs
    batch_size: int = 64
    learning_rate: float = 0.1          # calibration.md: lr 0.1 and no weight decay let 500 images be memorised
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    min_learning_rate: float = 0.001    # cosine schedule floor
    num_workers: int = 0                # DataLoader workers
    accelerator: str = 'auto'           # Lightning accelerator: auto | cpu | gpu
    devices: Any = 'auto'               # Lightning devices
    lightning_strategy: str = 'auto'    # auto | ddp (DDP; on CPU the gloo backend, e.g. accelerator=cpu devices=2)
    max_minutes: float | None = None    # wall-clock budget of supernet training (Lightning max_time); None: no limit
    num_threads: int | None = None      # torch CPU threads (None: torch's default)
    channels_last: bool = True          # RLNAS / Pi-NAS: supernet and images channels-last (about 2x faster on this
                                        # project's CPUs; values unchanged); false: PyTorch's default layout
    # --- scoring and selection ------------------------------------------------------------------------------
    # Angle parameterisation (AnglePolicy); null: the space's own default (NAS-Bench-201: all/const3d/empty,
    # DARTS: all/const3d/identity, as in RLNAS's code for each space).
    angle_fixed: str | None = None      # all | none (fixed layers in the angle vector or not)
    angle_pool: str | None = None       # const3d | const4d | empty
    angle_skip: str | None = None       # empty | identity
    angle_edges: str | None = None      # own | cell_mean (each candidate averaged over its cell's edges)
    search: str = 'auto'                # auto | exhaustive | evolution
    evolution: dict = field(default_factory=dict)  # keyword arguments of nni_labelfree.selection.evolve
    max_flops: float | None = None      # FLOPs limit for the evolution (NNI profiler), None: no limit
    max_params: float | None = None     # parameter limit for the evolution, None: no limit
    # --- bookkeeping ----------------------------------------------------------------------------------------
    seed: int = 0                       # seeds labels, weights, sampling, shuffling and the evolution
    benchmark_table: str | None = 'builtin'  # NAS-Bench-201 accuracy table: builtin | a CSV path | None
    output_dir: str | None = None       # where artifacts go (trials: NNI's trial output dir)
    checkpoint_every: int = 0           # also save the supernet every N epochs (0: only initial and final)
    resume: bool = True                 # continue from the newest readable checkpoints/search_epoch*.ckpt of the
                                        # output folder; false: delete those and start over

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        """Write the resolved configuration as JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + '\n')


_CHOICES = {
    'strategy': STRATEGIES,
    'task': ('rotation', 'colorization', 'jigsaw', 'supervised'),
    'label_mode': ('uniform_once', 'shuffle_once', 'uniform_per_iteration', 'shuffle_per_iteration'),
    'search': ('auto', 'exhaustive', 'evolution'),
    'angle_fixed': (None, 'all', 'none'),
    'angle_pool': (None, 'const3d', 'const4d', 'empty'),
    'angle_skip': (None, 'empty', 'identity'),
    'angle_edges': (None, 'own', 'cell_mean'),
    'lightning_strategy': ('auto', 'ddp'),
    'unreal_data': ('rlrd', 'rlgd', 'rlrn'),
    'algorithm': ('darts', 'sgas'),
    'sgas_criterion': (1, 2),
    'selection': ('auto', 'linear_eval', 'label_free'),
    'teacher_precision': ('float32', 'bfloat16', 'float16'),
    'queue_precision': ('float32', 'bfloat16'),
}
_BOOLS = ('resume', 'cross_path', 'mean_teacher', 'negatives', 'pretext_augment', 'channels_last')
_POSITIVE = ('channels', 'cells_per_stage', 'num_cells', 'image_size', 'num_classes', 'epochs', 'batch_size',
             'decision_freq')
_NON_NEGATIVE_INTS = ('seed', 'num_workers', 'checkpoint_every', 'decision_warmup')
# Float keys: (name, may be None, must be > 0 rather than >= 0).
_FLOATS = (('learning_rate', False, True), ('momentum', False, False), ('weight_decay', False, False),
           ('min_learning_rate', False, False), ('max_minutes', True, True), ('max_flops', True, True),
           ('max_params', True, True), ('arc_learning_rate', True, True), ('temperature', False, True),
           ('ema_momentum', False, False), ('held_out_fraction', False, False), ('queue_fraction', False, False))


def parse_value(text: str) -> Any:
    """A flag value as YAML would read it, plus numbers YAML 1.1 leaves as strings (``5e-4``, ``1e3``)."""
    import yaml
    value = yaml.safe_load(text) if text != '' else None
    if isinstance(value, str) and not text.strip().startswith(('"', "'")):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def merge_layers(layers: tuple, schema: type, what: str = 'configuration') -> dict[str, Any]:
    """Merge mappings (later wins) after checking every key is a field of the dataclass ``schema``.

    ``-`` in keys reads as ``_``; an unknown key raises ``ValueError`` naming it, a close match and the valid keys.
    """
    valid = {f.name for f in dataclasses.fields(schema)}
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            key = key.replace('-', '_')
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f' Did you mean {close[0]!r}?' if close else ''
                raise ValueError(f'Unknown {what} key {key!r}.{hint} Valid keys: {", ".join(sorted(valid))}.')
            merged[key] = value
    return merged


def flatten_parameter_groups(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """NNI parameters with groups merged in: a choice whose values are mappings of config keys (e.g.
    ``ablation: {_type: choice, _value: [{cross_path: false, negatives: true}, ...]}``) arrives as
    ``{'ablation': {...}}``; its keys become top-level keys. Mappings under real config keys (``evolution``) stay."""
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    flat: dict[str, Any] = {}
    for key, value in (params or {}).items():
        if isinstance(value, Mapping) and key.replace('-', '_') not in fields:
            flat.update({k: v for k, v in value.items() if k != '_name'})
        else:
            flat[key] = value
    return flat


def resolve_config(*layers: Mapping[str, Any] | None) -> SearchConfig:
    """Merge parameter layers (later wins) onto the defaults, refusing unknown keys and invalid values."""
    merged = merge_layers(layers, SearchConfig)
    config = SearchConfig(**merged)
    _validate(config)
    return config


def _validate(config: SearchConfig) -> None:
    for key, allowed in _CHOICES.items():
        if getattr(config, key) not in allowed:
            raise ValueError(f'Configuration {key}={getattr(config, key)!r} is not one of '
                             f'{", ".join(str(a) for a in allowed)}.')
    for key in _POSITIVE:
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f'Configuration {key} must be a positive integer, got {value!r}.')
    for key in _NON_NEGATIVE_INTS:
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f'Configuration {key} must be a non-negative integer, got {value!r}.')
    for key in _BOOLS:
        if not isinstance(getattr(config, key), bool):
            raise ValueError(f'Configuration {key} must be true or false, got {getattr(config, key)!r}.')
    for key, optional, positive in _FLOATS:
        _check_number(key, getattr(config, key), optional, positive)
    if config.num_classes < 2:
        raise ValueError(f'Configuration num_classes must be at least 2, got {config.num_classes}.')
    _check_registered_names(config)
    if config.unreal_classes is not None and (isinstance(config.unreal_classes, bool) or
                                              not isinstance(config.unreal_classes, int) or config.unreal_classes < 2):
        raise ValueError(f'Configuration unreal_classes must be an integer >= 2 or null, got {config.unreal_classes!r}.')
    if config.queue_size is not None and (isinstance(config.queue_size, bool) or not isinstance(config.queue_size, int)
                                          or config.queue_size < 1):
        raise ValueError(f'Configuration queue_size must be a positive integer or null, got {config.queue_size!r}.')
    if not 0 < config.queue_fraction <= 1:
        raise ValueError(f'Configuration queue_fraction must be in (0, 1], got {config.queue_fraction!r}; it sizes '
                         'the Pi-NAS queue as a share of the training images when queue_size is null.')
    if not 0 <= config.held_out_fraction < 1:
        raise ValueError(f'Configuration held_out_fraction must be in [0, 1), got {config.held_out_fraction!r}; '
                         '0 selects on the training images themselves.')
    if not 0 <= config.ema_momentum < 1:
        raise ValueError(f'Configuration ema_momentum must be in [0, 1), got {config.ema_momentum!r}.')
    if not isinstance(config.evolution, dict):
        raise ValueError(f'Configuration evolution must be a mapping of evolve() arguments, got {config.evolution!r}.')
    _check_stage_depths(config.stage_depths, config.space)
    if config.stage_depths is not None:  # a list of its own, so saved (JSON) and given (tuple) values compare equal
        config.stage_depths = list(config.stage_depths)


def _check_stage_depths(depths: Any, space: str) -> None:
    if depths is None:
        return
    if space != 'resnest':
        raise ValueError(f'Configuration stage_depths={depths!r} applies to space=resnest only (its four stages); '
                         f'{space} takes cells_per_stage. Set stage_depths to null.')
    if (not isinstance(depths, (list, tuple)) or len(depths) != 4
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths)):
        raise ValueError(f'Configuration stage_depths must be 4 positive integers, the blocks of ResNeSt\'s four '
                         f'stages (Pi-NAS: [3, 4, 6, 3]), or null, got {depths!r}.')


def _check_number(key: str, value: Any, optional: bool, positive: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f'Configuration {key} must be a number{" or null" if optional else ""}, got {value!r}.')
    if value < 0 or (positive and value == 0):
        raise ValueError(f'Configuration {key} must be {"positive" if positive else "non-negative"}, got {value!r}.')


def _check_registered_names(config: SearchConfig) -> None:
    """Unknown space or data names fail here, before anything is written or trained."""
    from nni_labelfree.data import list_image_sources
    from nni_labelfree.search_spaces import list_spaces
    if config.space not in list_spaces():
        raise ValueError(f'Unknown search space {config.space!r}. Available spaces: {", ".join(list_spaces())}.')
    if config.data not in list_image_sources():
        raise ValueError(f'Unknown data source {config.data!r}. Available sources: '
                         f'{", ".join(list_image_sources())}.')
