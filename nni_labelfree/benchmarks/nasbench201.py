"""NAS-Bench-201 cell encodings, training-free structural rules and the CIFAR-10 accuracy table.

A NAS-Bench-201 cell is a 4-node DAG (node 0 = cell input, node 3 = cell output) with one operation on each of
its 6 edges, so the space holds 5^6 = 15,625 cells. Three encodings are used throughout the project:

- **arch dict** (our NNI label scheme): ``{'cell/1_0': 'nor_conv_3x3', ...}``, key ``cell/{to}_{from}``;
- **official string**: ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (edges 1<-0 | 2<-0, 2<-1 | 3<-0, 3<-1, 3<-2);
- **op indices**: integer arrays of shape ``(n, 6)`` indexing :data:`NB201_OPS` in :data:`NB201_EDGES` order.
  :func:`all_op_indices` enumerates all cells in ``itertools.product`` order; row ``r`` of that array has
  flat index ``r`` (see :func:`flat_index`), which is how :class:`NB201Table` looks accuracies up.

Reference: Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture Search",
ICLR 2020.
"""
from __future__ import annotations

import csv
import gzip
import importlib.resources
import io
import itertools
import logging
import types
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np

__all__ = [
    'NB201_OPS', 'NB201_EDGES', 'NB201_LABELS', 'NB201_PATHS', 'NB201_NUM_CELLS', 'NB201_HUB_OPS',
    'arch_to_string', 'string_to_arch', 'from_nni_hub_arch', 'nb201_choices',
    'all_op_indices', 'flat_index', 'op_indices_to_strings', 'arch_to_op_indices',
    'valid_path_mask', 'edges_on_valid_paths', 'count_convs_on_valid_paths', 'params_on_valid_paths',
    'op_type_order_score', 'DEFAULT_OP_TYPE_SCORES',
    'NB201Table', 'load_nb201_table',
]

_logger = logging.getLogger(__name__)

NB201_OPS = ('none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3')
NB201_EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from), official string order
NB201_LABELS = tuple(f'cell/{j}_{i}' for j, i in NB201_EDGES)
# Input->output node paths [0,3], [0,2,3], [0,1,2,3], [0,1,3] as indices into NB201_EDGES.
NB201_PATHS = ((3,), (1, 5), (0, 2, 5), (0, 4))
NB201_NUM_CELLS = len(NB201_OPS) ** len(NB201_EDGES)
# NNI's hub `NasBench201` names the convolutions without the `nor_` prefix.
NB201_HUB_OPS = types.MappingProxyType({'none': 'none', 'skip_connect': 'skip_connect', 'conv_1x1': 'nor_conv_1x1',
                                        'conv_3x3': 'nor_conv_3x3', 'avg_pool_3x3': 'avg_pool_3x3'})

_OP_INDEX = {op: k for k, op in enumerate(NB201_OPS)}
_CONV_1X1, _CONV_3X3 = _OP_INDEX['nor_conv_1x1'], _OP_INDEX['nor_conv_3x3']
_FLAT_WEIGHTS = len(NB201_OPS) ** np.arange(len(NB201_EDGES) - 1, -1, -1)
DEFAULT_OP_TYPE_SCORES = types.MappingProxyType(
    {'nor_conv_3x3': 3.0, 'nor_conv_1x1': 2.0, 'avg_pool_3x3': 1.0, 'skip_connect': None})

ArchLike = Union[Mapping[str, str], str]


# ---------------------------------------------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------------------------------------------
def _check_arch(arch: Mapping[str, str]) -> None:
    if not isinstance(arch, Mapping):
        raise TypeError(f'A NAS-Bench-201 arch must be a dict label -> op, got {type(arch).__name__}. '
                        f'Expected keys {NB201_LABELS}; use string_to_arch() for official strings.')
    missing = [k for k in NB201_LABELS if k not in arch]
    extra = sorted(str(k) for k in arch if k not in NB201_LABELS)
    if missing or extra:
        raise ValueError(f'NAS-Bench-201 arch has missing labels {missing} and unexpected labels {extra}; '
                         f'expected exactly {NB201_LABELS}. For NNI hub exports use from_nni_hub_arch().')
    bad = {k: v for k, v in arch.items() if v not in _OP_INDEX}
    if bad:
        raise ValueError(f'Unknown NAS-Bench-201 op(s) {bad}; expected one of {NB201_OPS}. '
                         f'Hub names conv_1x1/conv_3x3 are converted by from_nni_hub_arch().')


def arch_to_string(arch: Mapping[str, str]) -> str:
    """Convert an arch dict ``{'cell/1_0': op, ...}`` to the official NAS-Bench-201 string (strict)."""
    _check_arch(arch)
    nodes = []
    for to in (1, 2, 3):
        nodes.append('|' + '|'.join(f'{arch[f"cell/{to}_{i}"]}~{i}' for i in range(to)) + '|')
    return '+'.join(nodes)


def string_to_arch(s: str) -> dict[str, str]:
    """Parse an official string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` into an arch dict (strict)."""
    expected = '|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'
    if not isinstance(s, str):
        raise TypeError(f'Expected a NAS-Bench-201 string like {expected!r}, got {type(s).__name__}.')
    nodes = s.split('+')
    if len(nodes) != 3:
        raise ValueError(f'Malformed NAS-Bench-201 string {s!r}: {len(nodes)} node groups separated by "+", '
                         f'expected 3 as in {expected!r}.')
    arch = {}
    for to, node in enumerate(nodes, start=1):
        tokens = node.split('|')
        if len(tokens) != to + 2 or tokens[0] != '' or tokens[-1] != '':
            raise ValueError(f'Malformed node {node!r} in NAS-Bench-201 string {s!r}: expected {to} '
                             f'"|op~i|" entries for node {to}, as in {expected!r}.')
        for i, token in enumerate(tokens[1:-1]):
            op, sep, src = token.partition('~')
            if sep != '~' or src != str(i):
                raise ValueError(f'Malformed edge {token!r} in NAS-Bench-201 string {s!r}: expected "op~{i}" '
                                 f'(inputs of node {to} listed in order 0..{to - 1}).')
            arch[f'cell/{to}_{i}'] = op
    _check_arch(arch)
    return {k: arch[k] for k in NB201_LABELS}


def from_nni_hub_arch(arch: Mapping[str, str]) -> dict[str, str]:
    """Convert an export of NNI's hub ``NasBench201`` space to our label scheme.

    The hub labels edges ``cell/{from}_{to}`` with ops ``conv_1x1``/``conv_3x3``; ours are ``cell/{to}_{from}``
    with the official ``nor_conv_*`` names.
    """
    out = {}
    for to, frm in NB201_EDGES:
        key = f'cell/{frm}_{to}'
        if key not in arch:
            raise ValueError(f'NNI hub NasBench201 arch lacks label {key!r}; got {sorted(arch)}. Expected labels '
                             f'{[f"cell/{i}_{j}" for j, i in NB201_EDGES]} (NasBench201().random() output).')
        if arch[key] not in NB201_HUB_OPS:
            raise ValueError(f'Unknown hub op {arch[key]!r} for {key!r}; expected one of {tuple(NB201_HUB_OPS)}.')
        out[f'cell/{to}_{frm}'] = NB201_HUB_OPS[arch[key]]
    extra = sorted(set(arch) - {f'cell/{i}_{j}' for j, i in NB201_EDGES})
    if extra:
        raise ValueError(f'Unexpected labels {extra} in NNI hub NasBench201 arch; expected only the 6 cell labels.')
    return out


def nb201_choices(ops: Sequence[str] = NB201_OPS) -> dict[str, list[str]]:
    """Choices per label for :func:`nni_labelfree.selection.evolve` (pass ``NB201_OPS[1:]`` to drop ``none``)."""
    unknown = [op for op in ops if op not in _OP_INDEX]
    if unknown or not ops:
        raise ValueError(f'ops must be a non-empty subset of {NB201_OPS}; got unknown {unknown}.')
    return {label: list(ops) for label in NB201_LABELS}


# ---------------------------------------------------------------------------------------------------------------
# Vectorised encodings
# ---------------------------------------------------------------------------------------------------------------
def all_op_indices() -> np.ndarray:
    """All 15,625 cells as an int64 array ``(15625, 6)`` in ``itertools.product`` order (first edge slowest)."""
    grid = itertools.product(range(len(NB201_OPS)), repeat=len(NB201_EDGES))
    return np.array(list(grid), dtype=np.int64)


def _as_op_indices(op_idx) -> np.ndarray:
    arr = np.asarray(op_idx)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != len(NB201_EDGES) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f'op indices must be an integer array of shape (n, 6) (or (6,)), got dtype {arr.dtype} '
                         f'shape {arr.shape}. Build them with all_op_indices() or arch_to_op_indices().')
    if arr.size and (arr.min() < 0 or arr.max() >= len(NB201_OPS)):
        raise ValueError(f'op indices must lie in [0, {len(NB201_OPS) - 1}] (indices into NB201_OPS), '
                         f'got range [{arr.min()}, {arr.max()}].')
    return arr.astype(np.int64, copy=False)


def flat_index(op_idx) -> np.ndarray:
    """Row of each cell in :func:`all_op_indices` (base-5 number of its op indices); shape ``(n,)``."""
    return _as_op_indices(op_idx) @ _FLAT_WEIGHTS


def op_indices_to_strings(op_idx) -> list[str]:
    """Official strings of an ``(n, 6)`` (or ``(6,)``) op-index array; always returns a list."""
    return [arch_to_string({lab: NB201_OPS[k] for lab, k in zip(NB201_LABELS, row)})
            for row in _as_op_indices(op_idx).tolist()]


def arch_to_op_indices(arch: ArchLike) -> np.ndarray:
    """Op indices ``(6,)`` of an arch dict or official string."""
    if isinstance(arch, str):
        arch = string_to_arch(arch)
    _check_arch(arch)
    return np.array([_OP_INDEX[arch[lab]] for lab in NB201_LABELS], dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Training-free structural rules (calibration.md): baselines to report next to any label-free ranking
# ---------------------------------------------------------------------------------------------------------------
def valid_path_mask(op_idx) -> np.ndarray:
    """Bool ``(n, 4)``: input->output path ``p`` of :data:`NB201_PATHS` is valid iff none of its edges is ``none``."""
    arr = _as_op_indices(op_idx)
    return np.stack([np.all(arr[:, list(p)] != 0, axis=1) for p in NB201_PATHS], axis=1)


def edges_on_valid_paths(op_idx) -> np.ndarray:
    """Bool ``(n, 6)``: the edge lies on at least one valid path (an edge on several paths is still one edge)."""
    valid = valid_path_mask(op_idx)
    on = np.zeros((valid.shape[0], len(NB201_EDGES)), dtype=bool)
    for p, edges in enumerate(NB201_PATHS):
        on[:, list(edges)] |= valid[:, p:p + 1]
    return on


def count_convs_on_valid_paths(op_idx) -> np.ndarray:
    """Number of conv edges (1x1 or 3x3) lying on at least one valid path; each edge counted once.

    Kendall tau-b against ``cifar10_test`` over all 15,625 cells: 0.611 (calibration.md: 0.611).
    """
    arr = _as_op_indices(op_idx)
    conv = (arr == _CONV_1X1) | (arr == _CONV_3X3)
    return (conv & edges_on_valid_paths(arr)).sum(axis=1)


def params_on_valid_paths(op_idx, channels: int = 16) -> np.ndarray:
    """Conv weights on valid paths: ``9 C^2`` per 3x3 and ``C^2`` per 1x1 edge on at least one valid path.

    An edge shared by several valid paths is counted once (it is one set of weights); BN parameters, the
    parameter-free ops and edges off every valid path count 0. Kendall tau-b against ``cifar10_test``: 0.654
    (calibration.md: 0.654).
    """
    if channels < 1:
        raise ValueError(f'channels must be a positive int (cell width C), got {channels}.')
    arr = _as_op_indices(op_idx)
    weights = np.where(arr == _CONV_3X3, 9, np.where(arr == _CONV_1X1, 1, 0)) * channels ** 2
    return (weights * edges_on_valid_paths(arr)).sum(axis=1)


def op_type_order_score(op_idx, op_scores: Mapping[str, float | None] | None = None) -> np.ndarray:
    """Mean fixed op-type score over the ops on valid paths (each edge once); 0 without a scored op.

    ``op_scores`` maps op names to scores; an op mapped to ``None`` or left out is excluded from the mean.

    Default scores (:data:`DEFAULT_OP_TYPE_SCORES`): 3x3 conv 3, 1x1 conv 2, avg pool 1, skip ``None``. An op
    scored ``None`` is left out of the mean: skip carries no computation, and averaging it in at score 0 dilutes
    the rule (tau 0.51 instead of 0.665). Cells whose valid paths hold only skips, and disconnected cells, score 0,
    below any cell with a pool or conv on a valid path, so the order is 3x3 > 1x1 > pool > skip. Kendall tau-b
    against ``cifar10_test``: 0.665 (calibration.md: 0.669; counting an edge once per valid path gives 0.676).
    """
    scores = DEFAULT_OP_TYPE_SCORES if op_scores is None else op_scores
    unknown = sorted(set(scores) - set(NB201_OPS[1:]))
    if unknown:
        raise ValueError(f'op_scores has unknown ops {unknown}; expected keys among {NB201_OPS[1:]}.')
    arr = _as_op_indices(op_idx)
    table = np.array([scores.get(op) if scores.get(op) is not None else np.nan for op in NB201_OPS], dtype=float)
    values = table[arr]
    counted = edges_on_valid_paths(arr) & ~np.isnan(values)
    n = counted.sum(axis=1)
    total = np.where(counted, values, 0.0).sum(axis=1)
    return np.where(n > 0, total / np.maximum(n, 1), 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Accuracy table
# ---------------------------------------------------------------------------------------------------------------
class NB201Table:
    """Ground-truth accuracies of all 15,625 cells, stored in :func:`all_op_indices` order.

    Parameters
    ----------
    strings
        Official strings, one per cell, in :func:`all_op_indices` order.
    benchmark_index
        NAS-Bench-201 index of each cell, same order.
    values
        Column name -> accuracy array (same order).
    """

    def __init__(self, strings: Sequence[str], benchmark_index: np.ndarray, values: Mapping[str, np.ndarray]):
        self.strings = tuple(strings)
        self.benchmark_index = np.asarray(benchmark_index, dtype=np.int64)
        self._values = {k: np.asarray(v, dtype=float) for k, v in values.items()}
        for arr in (self.benchmark_index, *self._values.values()):
            arr.setflags(write=False)
            if arr.shape != (NB201_NUM_CELLS,):
                raise ValueError(f'NB201Table arrays must have shape ({NB201_NUM_CELLS},), got {arr.shape}.')

    @property
    def columns(self) -> tuple[str, ...]:
        """Names of the accuracy columns."""
        return tuple(self._values)

    def values(self, column: str = 'cifar10_test') -> np.ndarray:
        """Read-only accuracy array of ``column`` in :func:`all_op_indices` order."""
        if column not in self._values:
            raise KeyError(f'Unknown NB201 column {column!r}; available columns: {list(self._values)}.')
        return self._values[column]

    def accuracy(self, arch: ArchLike, column: str = 'cifar10_test') -> float:
        """Accuracy of one cell given as arch dict or official string."""
        return float(self.values(column)[flat_index(arch_to_op_indices(arch))[0]])

    def accuracies(self, op_idx, column: str = 'cifar10_test') -> np.ndarray:
        """Accuracies of an ``(n, 6)`` op-index array (vectorised lookup)."""
        return self.values(column)[flat_index(op_idx)]

    def rank_percentile(self, acc, column: str = 'cifar10_test') -> np.ndarray | float:
        """Fraction of all cells with strictly higher accuracy than ``acc`` (0 = best cell)."""
        ordered = np.sort(self.values(column))
        better = NB201_NUM_CELLS - np.searchsorted(ordered, np.asarray(acc, dtype=float), side='right')
        frac = better / NB201_NUM_CELLS
        return float(frac) if np.ndim(frac) == 0 else frac

    def best(self, column: str = 'cifar10_test') -> tuple[str, float]:
        """``(official string, accuracy)`` of the best cell; the lowest flat index wins a tie."""
        values = self.values(column)
        row = int(np.argmax(values))
        return self.strings[row], float(values[row])


def _read_csv_text(path: Path | None) -> str:
    if path is None:
        resource = importlib.resources.files(__package__).joinpath('nb201_cifar10.csv.gz')
        with resource.open('rb') as fh:
            return gzip.decompress(fh.read()).decode('utf-8')
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'NB201 table {path} does not exist; pass a CSV/CSV.gz with columns index, arch, '
                                f'cifar10_test, ... or path=None for the packaged table.')
    raw = path.read_bytes()
    return (gzip.decompress(raw) if raw[:2] == b'\x1f\x8b' else raw).decode('utf-8')


def load_nb201_table(path: str | Path | None = None) -> NB201Table:
    """Load the accuracy table from a CSV or gzip CSV; ``None`` loads the copy shipped in the package.

    Required columns: ``index``, ``arch``; every other column is read as a float accuracy column.
    """
    reader = csv.DictReader(io.StringIO(_read_csv_text(path)))
    fields = reader.fieldnames or []
    if 'index' not in fields or 'arch' not in fields or len(fields) < 3:
        raise ValueError(f'NB201 table {path or "(packaged)"} has columns {fields}; expected index, arch and at '
                         f'least one accuracy column (see PROVENANCE.md).')
    columns = [f for f in fields if f not in ('index', 'arch')]
    strings = [''] * NB201_NUM_CELLS
    bench_idx = np.full(NB201_NUM_CELLS, -1, dtype=np.int64)
    values = {c: np.full(NB201_NUM_CELLS, np.nan) for c in columns}
    for row in reader:
        r = int(flat_index(arch_to_op_indices(row['arch']))[0])
        if bench_idx[r] >= 0:
            raise ValueError(f'NB201 table lists {row["arch"]!r} twice; expected each of the 15,625 cells once.')
        strings[r], bench_idx[r] = row['arch'], int(row['index'])
        for c in columns:
            values[c][r] = float(row[c])
    missing = int((bench_idx < 0).sum())
    if missing:
        raise ValueError(f'NB201 table lacks {missing} of the {NB201_NUM_CELLS} cells; expected the full space.')
    _logger.debug('Loaded NB201 table with columns %s', columns)
    return NB201Table(strings, bench_idx, values)
