"""Read an exported architecture for retraining, in any form our searches and the papers write one.

Accepted forms (:func:`load_architecture`):

- the ``arch.json`` a search writes (:func:`nni_labelfree.experiment.search.run_search`: ``{'arch': {label: op},
  'nb201_string' | 'genotype': ..., ...}``), or the folder holding it (a search ``--output`` folder or an nnictl
  trial's output folder), or the final result an nnictl search trial reported (``'arch'`` as a string);
- a NAS-Bench-201 string ``|nor_conv_3x3~0|+|...~0|...~1|+|...~0|...~1|...~2|`` (Dong & Yang, ICLR 2020), inline or
  in a text file;
- a DARTS genotype (Liu et al., ICLR 2019) as JSON ``{"normal": [["sep_conv_3x3", 0], ...], "reduce": [...]}``,
  or as DARTS's own ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)``, inline or in a
  file;
- a plain arch dict ``{label: op}`` of either space (our labels, or NNI's hub ``NasBench201`` labels).

The space is recognised from the labels and ops; an architecture of one space given for the other is refused with
a message naming the space it looks like.
"""
from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from nni_labelfree.benchmarks.nasbench201 import (NB201_EDGES, NB201_HUB_OPS, NB201_LABELS, NB201_OPS,
                                                  arch_to_string, from_nni_hub_arch, string_to_arch)
from nni_labelfree.search_spaces.darts import (DARTS_LABELS, DARTS_OPS, arch_from_genotype, darts_sample_is_valid,
                                               genotype_from_arch)

__all__ = ['LoadedArchitecture', 'load_architecture', 'SPACE_NAMES']

_logger = logging.getLogger(__name__)

SPACE_NAMES = {'nasbench201': 'NAS-Bench-201', 'darts': 'DARTS'}
_HUB_NB201_LABELS = frozenset(f'cell/{src}_{dst}' for dst, src in NB201_EDGES)  # NNI hub: cell/{from}_{to}
_GENOTYPE_FIELDS = ('normal', 'normal_concat', 'reduce', 'reduce_concat')
_FORMS = ('an arch.json written by `nni-labelfree search`, a search or trial output folder holding one, a '
          'NAS-Bench-201 string such as |nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|'
          'nor_conv_3x3~1|nor_conv_3x3~2|, or a DARTS genotype (JSON {"normal": [[op, input], ...], "reduce": '
          '[...]} or Genotype(normal=[...], ...))')


@dataclass(frozen=True)
class LoadedArchitecture:
    """An architecture in our label scheme, with its space and where it came from.

    Attributes
    ----------
    arch
        ``{label: op}`` for every label of the space (DARTS: ``none`` on unused edges).
    space
        ``'nasbench201'`` or ``'darts'``.
    source
        What was read (a path, or "inline NAS-Bench-201 string"), for messages and ``result.json``.
    """
    arch: dict
    space: str
    source: str

    def to_string(self) -> str:
        """The NAS-Bench-201 string, or the DARTS genotype as compact JSON (what the web UI shows)."""
        if self.space == 'nasbench201':
            return arch_to_string(self.arch)
        return json.dumps(genotype_from_arch(self.arch), separators=(',', ':'))


def load_architecture(spec: str | Mapping[str, Any], space: str | None = None) -> LoadedArchitecture:
    """Load an architecture from any accepted form (module docstring) and check it belongs to ``space``.

    Parameters
    ----------
    spec
        A path (file or folder), an inline NAS-Bench-201 string or DARTS genotype, or a mapping.
    space
        ``'nasbench201'``, ``'darts'`` or None (recognise it from the architecture).

    Raises
    ------
    FileNotFoundError
        ``spec`` looks like a path that does not exist, or a folder without ``arch.json``.
    ValueError
        A malformed file or string, an invalid architecture, or one of the other space.
    """
    if space is not None and space not in SPACE_NAMES:
        raise ValueError(f'Unknown space {space!r} for retraining; expected one of {", ".join(SPACE_NAMES)}.')
    if isinstance(spec, Mapping):
        loaded = _from_mapping(spec, 'the given mapping')
    elif isinstance(spec, str) and spec.strip():
        loaded = _from_text(spec.strip(), 'inline', allow_path=True)
    else:
        raise TypeError(f'The architecture must be a path or string, got {spec!r}. Pass {_FORMS}.')
    if space is not None and loaded.space != space:
        raise ValueError(f'The architecture from {loaded.source} is a {SPACE_NAMES[loaded.space]} architecture, but '
                         f'the space is {space!r}. Pass --space {loaded.space} (or leave the space out), or an '
                         f'architecture of the {SPACE_NAMES[space]} space.')
    return loaded


def _from_text(text: str, where: str, allow_path: bool) -> LoadedArchitecture:
    if text.startswith('|') and '~' in text:
        return _nb201(string_to_arch(text), f'{where} NAS-Bench-201 string' if where == 'inline' else where)
    if text.startswith('{'):
        return _from_mapping(_parse_json(text, where), where if where != 'inline' else 'inline JSON')
    if text.startswith('Genotype('):
        label = where if where != 'inline' else 'inline DARTS genotype'
        return _darts(_genotype_arch(_parse_genotype_repr(text, label), label), label)
    if allow_path:
        return _from_path(Path(text).expanduser(), text)
    raise ValueError(f'{where} holds neither JSON, a NAS-Bench-201 string nor a DARTS Genotype(...); expected '
                     f'{_FORMS}.')


def _from_path(path: Path, text: str) -> LoadedArchitecture:
    if path.is_dir():
        if not (path / 'arch.json').is_file():
            raise FileNotFoundError(f'{path} is a folder without arch.json. Pass the output folder of a search '
                                    '(`nni-labelfree search --output`) or of an nnictl search trial, or the '
                                    'architecture file itself.')
        path = path / 'arch.json'
    if not path.is_file():
        raise FileNotFoundError(f'Architecture {text!r} is not an existing file or folder, nor a NAS-Bench-201 '
                                f'string or DARTS genotype. Pass {_FORMS}.')
    content = path.read_text().strip()
    if not content:
        raise ValueError(f'Architecture file {path} is empty; expected {_FORMS}.')
    return _from_text(content, str(path), allow_path=False)


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f'{where} is not valid JSON ({err}); expected {_FORMS}.') from None


def _from_mapping(obj: Any, where: str) -> LoadedArchitecture:
    if not isinstance(obj, Mapping):
        raise ValueError(f'{where} holds a {type(obj).__name__}, expected a JSON object: {_FORMS}.')
    if 'arch' in obj:  # a search's arch.json, or a trial's final result (arch as a string)
        inner = obj['arch']
        if isinstance(inner, str):
            return _from_text(inner.strip(), where, allow_path=False)
        return _from_mapping(inner, where)
    if 'genotype' in obj:
        return _from_mapping(obj['genotype'], where)
    if 'normal' in obj or 'reduce' in obj:
        return _darts(_genotype_arch(obj, where), where)
    return _from_label_dict(obj, where)


def _from_label_dict(arch: Mapping[str, Any], where: str) -> LoadedArchitecture:
    keys = set(arch)
    if keys and keys <= set(NB201_LABELS) | _HUB_NB201_LABELS:
        if keys & _HUB_NB201_LABELS:  # NNI's hub NasBench201: cell/{from}_{to}, conv_1x1/conv_3x3
            _refuse_foreign_ops(set(arch.values()), tuple(NB201_HUB_OPS), 'NAS-Bench-201', DARTS_OPS, 'DARTS', where)
            try:
                return _nb201(from_nni_hub_arch(arch), where)
            except ValueError as err:
                raise ValueError(f'{where}: {err}') from None
        _refuse_foreign_ops(set(arch.values()), NB201_OPS, 'NAS-Bench-201', DARTS_OPS, 'DARTS', where)
        return _nb201(dict(arch), where)
    if keys and all(str(k).startswith(('normal/', 'reduce/')) for k in keys):
        if any('/input_' in str(k) for k in keys):
            raise ValueError(f'{where} looks like an export of NNI\'s hub DARTS space (labels normal/input_*), '
                             'whose labels differ from ours. Write it as a DARTS genotype {"normal": [[op, input], '
                             '...], "reduce": [...]} instead.')
        _refuse_foreign_ops(set(arch.values()), DARTS_OPS, 'DARTS', NB201_OPS, 'NAS-Bench-201', where)
        return _darts(dict(arch), where)
    shown = ', '.join(sorted(map(str, keys))[:4])
    raise ValueError(f'{where} has labels ({shown}, ...) of neither the NAS-Bench-201 space ({NB201_LABELS[0]}, ...) '
                     f'nor the DARTS space ({DARTS_LABELS[0]}, ...). Pass {_FORMS}.')


def _refuse_foreign_ops(values: set, own: tuple, own_name: str, other: tuple, other_name: str, where: str) -> None:
    unknown = sorted(map(str, values - set(own)))
    if unknown and set(unknown) <= set(other):
        raise ValueError(f'{where} has {own_name} labels but ops {unknown} of the {other_name} space; it mixes the '
                         f'two spaces. Expected ops from {own}.')


def _nb201(arch: dict, where: str) -> LoadedArchitecture:
    try:
        string = arch_to_string(arch)  # strict check of labels and ops
    except (TypeError, ValueError) as err:
        raise ValueError(f'{where}: {err}') from None
    return LoadedArchitecture(string_to_arch(string), 'nasbench201', where)


def _darts(arch: dict, where: str) -> LoadedArchitecture:
    try:
        valid = darts_sample_is_valid(arch)
    except (TypeError, ValueError) as err:
        raise ValueError(f'{where}: {err}') from None
    if not valid:
        raise ValueError(f'{where}: a DARTS architecture needs exactly two non-none inputs per node (a genotype); '
                         'this one does not. Export it with genotype_from_arch() after repair_darts_sample(), or '
                         'pass the genotype.')
    return LoadedArchitecture({label: arch[label] for label in DARTS_LABELS}, 'darts', where)


def _genotype_arch(genotype: Any, where: str) -> dict:
    try:
        return arch_from_genotype(genotype)
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f'{where}: malformed DARTS genotype ({err}). Expected {{"normal": [[op, input], ...8 pairs], '
                         '"reduce": [...8 pairs]}.') from None


def _parse_genotype_repr(text: str, where: str) -> dict:
    """``Genotype(normal=[...], normal_concat=range(2, 6), ...)`` as DARTS prints it, read without ``eval``."""
    try:
        call = ast.parse(text, mode='eval').body
        if not isinstance(call, ast.Call) or len(call.args) > len(_GENOTYPE_FIELDS):
            raise ValueError('not a Genotype(...) call')
        named = list(zip(_GENOTYPE_FIELDS, call.args)) + [(kw.arg, kw.value) for kw in call.keywords]
        return {name: _literal(node) for name, node in named}
    except (SyntaxError, ValueError) as err:
        raise ValueError(f'{where}: cannot read the DARTS genotype ({err}); expected Genotype(normal=[(op, input), '
                         '...], normal_concat=range(2, 6), reduce=[...], reduce_concat=range(2, 6)).') from None


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'range':
        return list(range(*(ast.literal_eval(arg) for arg in node.args)))
    return ast.literal_eval(node)
