"""Search, then retrain: the retrain experiment ``nni-labelfree experiment <search.yml> --then-retrain X`` starts.

After the search experiment ends, every SUCCEEDED search trial's ``arch.json`` (in its trial output folder) is
retrained from scratch with real labels over seeds, as one nnictl experiment: ``searchSpace`` = {``arch``: the
``arch.json`` paths} x {``seed``: the seeds}, ``GridSearch``, one trial per pair, running the retrain trial command
``python3 -m nni_labelfree.experiment.retrain --set ...`` (NNI's parameters ``arch`` and ``seed`` are merged over
the ``--set`` flags). ``X`` is either

- a retrain experiment YAML (e.g. ``experiment_configs/retrain_*.yml``): its trial command, training service, GPU
  and concurrency settings are kept, its ``searchSpace`` gets the ``arch`` grid (its ``seed`` values are kept
  unless ``--retrain-seeds`` is given); or
- a retrain preset name (e.g. ``cpu``): the trial command is the retrain command with ``--set preset=X`` and the
  search's space, and the training service, GPU and concurrency settings are the search experiment's.

The generated config is written to ``<search experiment folder>/retrain.yml`` (runnable with plain ``nnictl
create``), lives in the same working directory, and is validated by NNI's schema before it starts.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from nni_labelfree.experiment.launcher_summary import COMBINED_COLUMNS, RETRAIN_MODULE

__all__ = ['RetrainSpec', 'prepare_retrain', 'search_architectures', 'retrain_config_dict', 'build_retrain_config',
           'combined_rows']

_logger = logging.getLogger(__name__)

_PRESET_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')
_GRID_KEYS = ('arch', 'seed')
_DUPLICATED_SERVICE_KEYS = ('trialCommand', 'trialCodeDirectory', 'trialGpuNumber', 'debug')


@dataclass(frozen=True)
class RetrainSpec:
    """How to retrain a search's architectures: a template YAML or a preset, seeds, extra ``--set`` flags."""

    template: Path | None = None
    preset: str | None = None
    seeds: tuple[int, ...] | None = None
    set_flags: tuple[str, ...] = ()


def _known_presets() -> Sequence[str] | None:
    """The retrain command's preset names, when it publishes them (``PRESETS`` of ``retrain_config`` or ``retrain``)."""
    if importlib.util.find_spec(RETRAIN_MODULE) is None:
        raise ValueError(f'--then-retrain <preset> needs the retrain command ({RETRAIN_MODULE}), which this '
                         f'installation lacks; pass a retrain experiment YAML instead.')
    for name in (f'{RETRAIN_MODULE}_config', RETRAIN_MODULE):
        if importlib.util.find_spec(name) is not None:
            presets = getattr(importlib.import_module(name), 'PRESETS', None)
            if presets is not None:
                return list(presets)
    return None


def _check_set_flags(set_flags: Sequence[str]) -> tuple[str, ...]:
    for pair in set_flags:
        key, sep, _ = pair.partition('=')
        if not sep or not key.strip():
            raise ValueError(f'--retrain-set expects key=value, got {pair!r}.')
        if key.strip() in _GRID_KEYS:
            raise ValueError(f'--retrain-set {key}=...: {key!r} is chosen per trial by the retrain grid (architecture '
                             f'x seed); use --retrain-seeds for seeds.')
    return tuple(set_flags)


def _check_seeds(seeds: Sequence[int] | None) -> tuple[int, ...] | None:
    if seeds is None:
        return None
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f'--retrain-seeds expects one or more integers (e.g. 0,1,2), got {list(seeds)!r}.')
    return tuple(seeds)


def prepare_retrain(then_retrain: str, seeds: Sequence[int] | None = None,
                    set_flags: Sequence[str] = ()) -> RetrainSpec:
    """Check ``--then-retrain`` and its options before the search starts; returns what to build afterwards."""
    from nni_labelfree.experiment.launcher import load_experiment_config
    seeds, set_flags = _check_seeds(seeds), _check_set_flags(set_flags)
    path = Path(then_retrain)
    if path.suffix in ('.yml', '.yaml') or path.is_file():
        load_experiment_config(path)  # raises with NNI's reason when the template is not a valid config
        return RetrainSpec(template=path.resolve(), seeds=seeds, set_flags=set_flags)
    if not _PRESET_NAME.match(then_retrain):
        raise ValueError(f'--then-retrain {then_retrain!r} is neither a retrain experiment YAML (.yml) nor a preset '
                         f'name (letters, digits, _ . -).')
    presets = _known_presets()
    if presets is not None and then_retrain not in presets:
        raise ValueError(f'Unknown retrain preset {then_retrain!r}; the retrain command knows {sorted(presets)}.')
    return RetrainSpec(preset=then_retrain, seeds=seeds, set_flags=set_flags)


def search_architectures(search) -> list[Path]:
    """``arch.json`` of every SUCCEEDED trial of a followed search experiment (an ``ExperimentRun``), by trial id."""
    paths = []
    for row in search.rows:
        folder = search.trial_dirs.get(row['trial'])
        if row['status'] == 'SUCCEEDED' and folder is not None and (folder / 'arch.json').is_file():
            paths.append(folder / 'arch.json')
    if not paths:
        statuses = ', '.join(f'{r["trial"]}: {r["status"]}' for r in search.rows) or 'no trials'
        raise ValueError(f'Nothing to retrain: no SUCCEEDED trial of experiment {search.id} left an arch.json '
                         f'({statuses}). Check the trial logs in the web UI or under its trials/ folder.')
    return paths


def _search_space_name(arch_paths: Sequence[Path]) -> str | None:
    """The space every search trial used (from its ``config.json``), or None when unknown or mixed."""
    names = set()
    for path in arch_paths:
        config = path.parent / 'config.json'
        names.add(json.loads(config.read_text()).get('space') if config.is_file() else None)
    return names.pop() if len(names) == 1 else None


def _grid(template_space: dict | None, arch_paths: Sequence[Path], seeds: tuple[int, ...] | None) -> dict:
    space = dict(template_space or {})
    template_seeds = space.get('seed', {}).get('_value') if space.get('seed', {}).get('_type') == 'choice' else None
    space['arch'] = {'_type': 'choice', '_value': [str(p) for p in arch_paths]}
    space['seed'] = {'_type': 'choice', '_value': list(seeds or template_seeds or [0])}
    return space


def _grid_size(space: dict) -> int | None:
    if any(spec.get('_type') != 'choice' for spec in space.values()):
        return None  # GridSearch ends by itself once the grid is exhausted
    return math.prod(len(spec['_value']) for spec in space.values())


def _strip_service(service: dict) -> dict:
    return {k: v for k, v in service.items() if k not in _DUPLICATED_SERVICE_KEYS}


def _from_template(spec: RetrainSpec) -> dict[str, Any]:
    from nni_labelfree.experiment.launcher import load_experiment_config
    config = load_experiment_config(spec.template).canonical_copy().json()
    config.pop('searchSpaceFile', None)
    config['trainingService'] = _strip_service(config['trainingService'])
    return config


def _from_preset(spec: RetrainSpec, search_config, space_name: str | None) -> dict[str, Any]:
    base = search_config.canonical_copy().json()
    config = {k: base[k] for k in ('trialCodeDirectory', 'trialConcurrency', 'trialGpuNumber', 'logLevel')
              if k in base}
    flags = [f'preset={spec.preset}'] + ([f'space={space_name}'] if space_name else [])
    config['trialCommand'] = ' '.join([f'python3 -m {RETRAIN_MODULE}'] + [f'--set {f}' for f in flags])
    config['trainingService'] = _strip_service(base['trainingService'])
    return config


def retrain_config_dict(spec: RetrainSpec, search_config, search_id: str, arch_paths: Sequence[Path]) -> dict:
    """The retrain experiment config (nnictl keys) for ``arch_paths`` of search experiment ``search_id``."""
    space_name = _search_space_name(arch_paths)
    config = _from_template(spec) if spec.template else _from_preset(spec, search_config, space_name)
    if spec.set_flags:
        config['trialCommand'] += ''.join(f' --set {pair}' for pair in spec.set_flags)
    config['searchSpace'] = _grid(config.get('searchSpace'), arch_paths, spec.seeds)
    config['maxTrialNumber'] = _grid_size(config['searchSpace'])
    config['tuner'] = {'name': 'GridSearch'}
    config['experimentName'] = f'{search_config.experiment_name or "search"} {search_id}: retrain'
    config['experimentWorkingDirectory'] = search_config.canonical_copy().experiment_working_directory
    return {k: v for k, v in config.items() if v is not None}


def build_retrain_config(spec: RetrainSpec, search) -> Path:
    """Write the retrain config of a followed search (an ``ExperimentRun``) to ``<its folder>/retrain.yml``."""
    arch_paths = search_architectures(search)
    config = retrain_config_dict(spec, search.config, search.id, arch_paths)
    path = Path(search.summary_dir) / 'retrain.yml'
    header = (f'# Generated by nni-labelfree experiment --then-retrain: retrains the {len(arch_paths)} '
              f'architecture(s)\n'
              f'# of experiment {search.id} over seeds {config["searchSpace"]["seed"]["_value"]}.\n')
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def combined_rows(search, retrain) -> list[dict]:
    """Both stages' rows in :data:`COMBINED_COLUMNS` (``stage`` = ``search`` / ``retrain``).

    ``test_acc`` is what retraining measured; a search trial's own ``test_acc`` (the NAS-Bench-201 table's accuracy
    of its exported cell, no training) goes to ``table_acc``, beside the retrained cells' table accuracy.
    """
    rows = []
    for row in search.rows:
        rows.append({**{c: row.get(c, '') for c in COMBINED_COLUMNS}, 'stage': 'search', 'test_acc': '',
                     'table_acc': row.get('test_acc', '')})
    rows += [{**{c: row.get(c, '') for c in COMBINED_COLUMNS}, 'stage': 'retrain'} for row in retrain.rows]
    return rows
