"""The RLNAS angle metric, computed decomposed.

Reference: Zhang et al., "Neural Architecture Search with Random Labels", CVPR 2021 (section 3.2), following
ABS/AngleNAS (Hu et al., ECCV 2020). For an architecture ``a`` with weight vector ``V(a, theta)``::

    angle(a) = arccos( <V(a, theta_0), V(a, theta_T)> / (|V(a, theta_0)| |V(a, theta_T)|) )

``V`` concatenates the parameters the architecture uses. Because a dot product and a squared norm of a
concatenation are sums over its pieces, every piece (a candidate op in a cell, or the fixed layers) is reduced once
to three numbers ``(<w0, wT>, |w0|^2, |wT|^2)``; an architecture's angle is then a few additions. All sums are in
float64 (float32 concatenations are off by ~1e-4 rad, more than the spread of the top-10, calibration.md).

Two parameterisations:

- :class:`PathAngleScorer` (RLNAS's NAS-Bench-201 form) for spaces exposing ``cell_dags()``: the vector holds, for
  every cell and every source-to-sink path without a ``none`` op, the pieces of the ops on that path (an edge on
  several paths counts several times); an architecture with no such path anywhere gets angle 0.
- :class:`ChoiceAngleScorer` (generic, any ``ModelSpace``): the fixed layers plus each chosen candidate of every
  ``LayerChoice``. ``InputChoice`` has no parameters and does not enter the vector.

Parameter-free candidates enter through :class:`AnglePolicy` surrogates, which are identical at ``theta_0`` and
``theta_T`` (so they pull the angle towards 0 in proportion to their size).

Per candidate kind (RLNAS's code, methods.md 1.4):

- ``none``: drops the path (path-aware) or adds nothing (per-candidate);
- pooling, bare or followed only by BatchNorm (``nn.Sequential(pool, bn)``, DARTS search nets): the pool's
  surrogate (``AnglePolicy.pool``, e.g. a constant ``1/K^2`` tensor ``[C, K, K]``) plus the BN's trained
  weight and bias when it is affine;
- ``nn.Identity``: the skip surrogate (``AnglePolicy.skip``: nothing on NAS-Bench-201, ``eye(C)`` on DARTS);
- any other candidate with parameters (convolutions, DARTS's stride-2 skip ``FactorizedReduce``): all of its
  trained parameters, BN weight and bias included. RLNAS's DARTS code reads the ``dil_conv`` BN weight twice in
  place of weight and bias (methods.md P5); here the bias is counted, i.e. that bug is fixed.

The surrogates' channel count ``C`` comes from the largest dense (ungrouped) conv among an edge's candidates.
Spaces may expose ``angle_policy_defaults`` (a dict of :class:`AnglePolicy` fields, e.g. DARTS's
``{'skip': 'identity'}``), which :class:`~nni_labelfree.strategies.RLNAS` uses when no policy is given.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nni.mutable import Categorical, CategoricalMultiple
from nni.nas.nn.pytorch import LayerChoice

__all__ = ['plain_architecture', 'AnglePolicy', 'ChoiceAngleScorer', 'PathAngleScorer', 'angle_scorer',
           'check_policy_fits', 'parameter_snapshot']

_logger = logging.getLogger(__name__)

_POOLS = (nn.AvgPool2d, nn.MaxPool2d)
_NONE_NAMES = ('none', 'zero')


@dataclass(frozen=True)
class AnglePolicy:
    """Which weights enter the angle vector and how parameter-free candidates are represented.

    Parameters
    ----------
    fixed
        ``'all'``: the layers outside any choice (stem, fixed reductions, last BN, classifier) enter the vector, as
        in RLNAS. ``'none'``: only candidate ops do (at CPU budgets the fixed layers dominate the vector).
    pool
        ``'const3d'``: a constant ``1/K^2`` tensor of shape ``[C_out, K, K]`` (RLNAS's code); ``'const4d'``: shape
        ``[C_out, C_in, K, K]`` (the paper's text); ``'empty'``: nothing.
    skip
        ``'empty'`` (RLNAS on NAS-Bench-201) or ``'identity'`` (``eye(C)``, RLNAS on DARTS/MobileNet).
    edges
        ``'own'``: every edge contributes its own candidate's statistics (RLNAS). ``'cell_mean'`` (path-aware
        scorer only): a candidate contributes the mean of its statistics over all edges of its cell, so the angle
        depends on which ops lie on the cell's valid paths but not on which edge holds them. Random-label training
        rotates the same op by different amounts on different edges, and that pattern is set by the edge's position
        (it repeats across seeds, correlation 0.97-0.99 on noise) rather than by the architecture; ``'cell_mean'``
        takes it out (README, RLNAS search quality). Every edge of a cell must offer the same candidates; on DARTS
        reduction cells a candidate's stride-2 form (input edges) and stride-1 form are averaged together.
    """
    fixed: str = 'all'
    pool: str = 'const3d'
    skip: str = 'empty'
    edges: str = 'own'

    def __post_init__(self) -> None:
        for field, allowed in (('fixed', ('all', 'none')), ('pool', ('const3d', 'const4d', 'empty')),
                               ('skip', ('empty', 'identity')), ('edges', ('own', 'cell_mean'))):
            if getattr(self, field) not in allowed:
                raise ValueError(f'AnglePolicy.{field}={getattr(self, field)!r} is not one of {allowed}.')


def parameter_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every parameter, keyed by name: the ``theta`` an angle is measured at."""
    return {name: p.detach().to('cpu', copy=True) for name, p in model.named_parameters()}


def _pair_stats(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """``[<a, b>, |a|^2, |b|^2]`` summed over tensor pairs, in float64."""
    out = np.zeros(3)
    for a, b in pairs:
        a64, b64 = a.double().flatten(), b.double().flatten()
        out += (float(a64 @ b64), float(a64 @ a64), float(b64 @ b64))
    return out


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    """The form NNI's ``freeze`` expects: lists for multi-choices."""
    return list(value) if isinstance(value, tuple) else value


def _pool_layer(module: nn.Module) -> nn.Module | None:
    """The pooling layer of a pooling candidate: a bare pool, or a pool followed only by BatchNorm.

    DARTS search networks (RLNAS, UnNAS) put a ``BatchNorm2d`` after each pool, built as
    ``nn.Sequential(pool, bn)``; RLNAS's DARTS angle counts such a candidate as the pool's constant surrogate plus
    the BN's trained weight and bias (methods.md 1.4).
    """
    if isinstance(module, _POOLS):
        return module
    if isinstance(module, nn.Sequential) and len(module) > 0 and isinstance(module[0], _POOLS) \
            and all(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in list(module)[1:]):
        return module[0]
    return None


def _op_kind(name: str, module: nn.Module) -> str:
    """``'none'``, ``'pool'`` (may carry BN parameters), ``'weighted'``, ``'skip'`` or ``'free'``."""
    if name.lower() in _NONE_NAMES or type(module).__name__ == 'Zero':
        return 'none'
    if _pool_layer(module) is not None:
        return 'pool'
    if any(True for _ in module.parameters()):
        return 'weighted'
    if isinstance(module, nn.Identity):
        return 'skip'
    return 'free'


def _conv_shape(choice: LayerChoice) -> tuple[int, int] | None:
    """``(C_out, C_in)`` of the largest dense conv among a choice's candidates (the surrogates' size).

    Grouped (depthwise) convs are passed over, since their weight ``[C, 1, K, K]`` does not give the edge's input
    width (DARTS's ``sep_conv`` starts with one), and so are smaller dense convs (the ``C/2``-wide halves of a
    ``FactorizedReduce``); ties go to the first. The first 4-D weight is the fallback.
    """
    best, fallback = None, None
    for name in choice.names:
        for module in choice[name].modules():
            if isinstance(module, nn.Conv2d) and module.groups == 1:
                shape = int(module.out_channels), int(module.in_channels)
                best = shape if best is None or shape[0] * shape[1] > best[0] * best[1] else best
        for param in choice[name].parameters():
            if param.dim() == 4 and fallback is None:
                fallback = int(param.shape[0]), int(param.shape[1])
    return best or fallback


def _surrogate(kind: str, module: nn.Module, choice: LayerChoice, policy: AnglePolicy) -> list[torch.Tensor]:
    """Constant tensors standing for a parameter-free candidate (same at theta_0 and theta_T)."""
    shape = _conv_shape(choice)
    if kind == 'pool' and policy.pool != 'empty' and shape is not None:
        pool = _pool_layer(module)
        k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
        dims = (shape[0], k, k) if policy.pool == 'const3d' else (shape[0], shape[1], k, k)
        return [torch.full(dims, 1.0 / (k * k), dtype=torch.float64)]
    if kind == 'skip' and policy.skip == 'identity' and shape is not None:
        return [torch.eye(shape[0], shape[1], dtype=torch.float64)]
    return []


class _AngleScorer:
    """Shared machinery: choices, encodings, fixed-layer statistics and the final arccos."""

    def __init__(self, model: nn.Module, initial: Mapping[str, torch.Tensor],
                 trained: Mapping[str, torch.Tensor] | None, policy: AnglePolicy):
        self.policy = policy
        self._initial = initial
        self._trained = trained if trained is not None else parameter_snapshot(model)
        missing = sorted(set(self._trained) - set(initial))
        if missing:
            raise ValueError(f'The initial snapshot lacks {len(missing)} parameters of the model (first: {missing[0]}). '
                             'Take it with parameter_snapshot() on the same (mutated) model before training.')
        self.choice_modules: dict[str, LayerChoice] = {
            name: m for name, m in model.named_modules() if isinstance(m, LayerChoice)}
        self.choices: dict[str, list[str]] = {}
        for module in self.choice_modules.values():
            self.choices.setdefault(module.label, list(module.names))
        self._add_parameter_free_choices(model)
        self.labels = list(self.choices)
        self._fixed = self._fixed_stats() if policy.fixed == 'all' else np.zeros(3)

    def _add_parameter_free_choices(self, model: nn.Module) -> None:
        """Choices outside any LayerChoice (e.g. InputChoice) belong to the architecture but not to the vector."""
        if not callable(getattr(model, 'simplify', None)):
            return
        for label, mutable in model.simplify().items():
            if label in self.choices:
                continue
            if isinstance(mutable, Categorical):
                self.choices[label] = list(mutable.values)
            elif isinstance(mutable, CategoricalMultiple) and mutable.n_chosen is not None:
                # Multi-choices (InputChoice) as tuples, so architectures stay hashable; decode() gives lists.
                self.choices[label] = list(itertools.combinations(mutable.values, mutable.n_chosen))
            else:
                raise ValueError(f'Choice {label!r} ({type(mutable).__name__}) cannot be enumerated for the angle; '
                                 'use LayerChoice, Categorical, or InputChoice with a fixed n_chosen.')

    # -- pieces -------------------------------------------------------------------------------------------------
    def _params_under(self, prefix: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        nested = [n + '.' for n in self.choice_modules if n.startswith(prefix) and n + '.' != prefix]
        return [(self._initial[n], t) for n, t in self._trained.items()
                if n.startswith(prefix) and not any(n.startswith(p) for p in nested)]

    def _fixed_stats(self) -> np.ndarray:
        inside = tuple(n + '.' for n in self.choice_modules)
        return _pair_stats([(self._initial[n], t) for n, t in self._trained.items() if not n.startswith(inside)])

    def _candidate_stats(self, module_name: str, value: str) -> tuple[str, np.ndarray]:
        """``(kind, stats)`` of one candidate: its trained parameters plus any constant surrogate."""
        choice = self.choice_modules[module_name]
        candidate = choice[value]
        kind = _op_kind(value, candidate)
        stats = _pair_stats(self._params_under(f'{module_name}.{value}.'))
        if kind != 'weighted':  # pool (+ its BN), skip: constant parts identical at theta_0 and theta_T
            stats += _pair_stats([(c, c) for c in _surrogate(kind, candidate, choice, self.policy)])
        return kind, stats

    # -- encodings ----------------------------------------------------------------------------------------------
    def encode(self, archs: Sequence[Mapping[str, str]] | Mapping[str, str]) -> np.ndarray:
        """Architectures (dicts label -> value) as an int array ``[n, len(labels)]`` of value indices."""
        if isinstance(archs, Mapping):
            archs = [archs]
        rows = []
        for arch in archs:
            try:
                rows.append([self.choices[label].index(_hashable(arch[label])) for label in self.labels])
            except (KeyError, ValueError) as err:
                raise ValueError(f'Architecture {dict(arch)} does not fit this space ({err}); expected a value for '
                                 f'each of {self.labels} from {self.choices}.') from None
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), len(self.labels))

    def decode(self, index_row: Sequence[int]) -> dict[str, str]:
        """One row of :meth:`encode` back to an architecture dict."""
        return {label: _plain(self.choices[label][int(i)]) for label, i in zip(self.labels, index_row)}

    def all_encodings(self, limit: int = 2_000_000) -> np.ndarray:
        """Every architecture of the space (product of choices), refusing spaces larger than ``limit``."""
        size = math.prod(len(v) for v in self.choices.values())
        if size > limit:
            raise ValueError(f'The space has {size} architectures, more than limit={limit}: use evolution instead.')
        return np.asarray(list(itertools.product(*(range(len(self.choices[lb])) for lb in self.labels))),
                          dtype=np.int64).reshape(size, len(self.labels))

    # -- scores -------------------------------------------------------------------------------------------------
    def _stats_of(self, encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(stats [n, 3], has_vector [n])``; subclasses implement."""
        raise NotImplementedError

    def angles(self, encoded: np.ndarray) -> np.ndarray:
        """Angles (radians, float64) of encoded architectures; larger is better in RLNAS."""
        stats, has_vector = self._stats_of(np.asarray(encoded, dtype=np.int64))
        stats = stats + self._fixed
        denom = np.sqrt(stats[:, 1] * stats[:, 2])
        with np.errstate(invalid='ignore', divide='ignore'):
            cosine = np.where(denom > 0, stats[:, 0] / np.where(denom > 0, denom, 1.0), 1.0)
        return np.where(has_vector, np.arccos(np.clip(cosine, -1.0, 1.0)), 0.0)

    def angle(self, arch: Mapping[str, str]) -> float:
        """The angle of one architecture dict."""
        return float(self.angles(self.encode(arch))[0])

    def _fixed_vector(self) -> list[str]:
        if self.policy.fixed == 'none':
            return []
        inside = tuple(n + '.' for n in self.choice_modules)
        return [n for n in self._trained if not n.startswith(inside)]

    def _candidate_vector(self, module_name: str, value: str, which: str) -> list[torch.Tensor]:
        choice = self.choice_modules[module_name]
        kind = _op_kind(value, choice[value])
        side = 0 if which == 'initial' else 1
        params = [pair[side] for pair in self._params_under(f'{module_name}.{value}.')]
        return params if kind == 'weighted' else _surrogate(kind, choice[value], choice, self.policy) + params

    def _naive_from_pieces(self, pieces: list[tuple[str, str]], has_vector: bool) -> float:
        if not has_vector:
            return 0.0
        vectors = []
        for which, params in (('initial', self._initial), ('trained', self._trained)):
            parts = [params[n].double().flatten() for n in self._fixed_vector()]
            parts += [t.double().flatten() for m, v in pieces for t in self._candidate_vector(m, v, which)]
            vectors.append(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64))
        if vectors[0].numel() == 0:
            return 0.0  # nothing that could rotate: same convention as the decomposed form
        cosine = torch.nn.functional.cosine_similarity(vectors[0], vectors[1], dim=0, eps=1e-300)
        return float(torch.acos(cosine.clamp(-1.0, 1.0)))


class ChoiceAngleScorer(_AngleScorer):
    """Angle over the fixed layers plus each chosen ``LayerChoice`` candidate (any NNI ``ModelSpace``).

    Parameters
    ----------
    model
        The supernet (or model space) whose parameters ``initial``/``trained`` were taken from.
    initial, trained
        :func:`parameter_snapshot` results; ``trained`` defaults to the model's current parameters.
    policy
        See :class:`AnglePolicy`. ``none`` candidates contribute nothing here.
    """

    def __init__(self, model: nn.Module, initial: Mapping[str, torch.Tensor],
                 trained: Mapping[str, torch.Tensor] | None = None, policy: AnglePolicy = AnglePolicy()):
        if policy.edges != 'own':
            raise ValueError(f'AnglePolicy(edges={policy.edges!r}) needs cells (PathAngleScorer on a space with '
                             'cell_dags()); the per-candidate angle has no cells to average over. Use edges="own".')
        super().__init__(model, initial, trained, policy)
        # table[label][value index] = summed stats of that candidate over every module sharing the label.
        self._table = {label: np.zeros((len(values), 3)) for label, values in self.choices.items()}
        for name, module in self.choice_modules.items():
            for i, value in enumerate(self.choices[module.label]):
                self._table[module.label][i] += self._candidate_stats(name, value)[1]

    def _stats_of(self, encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        stats = np.zeros((len(encoded), 3))
        for column, label in enumerate(self.labels):
            stats += self._table[label][encoded[:, column]]
        return stats, np.ones(len(encoded), dtype=bool)

    def naive_angle(self, arch: Mapping[str, str]) -> float:
        """The same angle from explicitly concatenated vectors (slow; for tests and benchmarks)."""
        pieces = [(name, arch[m.label]) for name, m in self.choice_modules.items()]
        return self._naive_from_pieces(pieces, True)


# Up to this many architectures per call, one gather over all paths is faster (DARTS, 1 arch: ~40x); beyond, the
# per-path loop is (DARTS, 2000 archs: ~10x), and its memory does not grow with paths x edges.
_GATHER_MAX = 32


class _PathGather:
    """All paths of a :class:`PathAngleScorer` as padded index arrays, summed in one gather per call.

    One call costs a few numpy operations whatever the number of paths (DARTS: 30 per cell), which is what makes
    single-architecture calls (the evolutionary search's) fast. Row 0 of the flat table is the zero padding.
    """

    def __init__(self, paths: Sequence[Sequence[tuple[int, np.ndarray, int]]]):
        depth = max((len(p) for p in paths), default=0)
        shape = (len(paths), depth)
        self.columns, self.base = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
        self.none, self.pad = np.full(shape, -1, dtype=np.int64), np.ones(shape, dtype=bool)
        offsets: dict[int, int] = {}
        tables = [np.zeros((1, 3))]
        for p, path in enumerate(paths):
            for e, (column, table, none_index) in enumerate(path):
                if id(table) not in offsets:
                    offsets[id(table)] = sum(len(t) for t in tables)
                    tables.append(table)
                self.columns[p, e], self.base[p, e] = column, offsets[id(table)]
                self.none[p, e], self.pad[p, e] = none_index, False
        self.table = np.concatenate(tables)

    def __call__(self, encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = encoded[:, self.columns]  # [n, paths, depth]
        rows = np.where(self.pad, 0, self.base + values)
        valid = ~np.any((values == self.none) & ~self.pad, axis=2)  # [n, paths]: no `none` on the path
        path_stats = self.table[rows].sum(axis=2) * valid[..., None]
        return path_stats.sum(axis=1), valid.any(axis=1)


class PathAngleScorer(_AngleScorer):
    """RLNAS's path-aware angle for cell spaces exposing ``cell_dags()`` (e.g. NAS-Bench-201).

    With ``AnglePolicy(edges='cell_mean')`` every edge of a cell reads one shared table: each candidate's statistics
    averaged over the cell's edges.

    Parameters are as for :class:`ChoiceAngleScorer`; ``cell_dags`` is the space's list of
    :class:`~nni_labelfree.search_spaces.CellDAG`.
    """

    def __init__(self, model: nn.Module, initial: Mapping[str, torch.Tensor], cell_dags: Sequence,
                 trained: Mapping[str, torch.Tensor] | None = None, policy: AnglePolicy = AnglePolicy()):
        super().__init__(model, initial, trained, policy)
        self.cell_dags = list(cell_dags)
        # Per cell and path: the (column, stats table [values, 3], none-value index or -1) of each edge on it.
        self._paths: list[list[tuple[int, np.ndarray, int]]] = []
        for dag in self.cell_dags:
            edge_tables = [self._edge_table(module_name, label) for _, _, label, module_name in dag.edges]
            if policy.edges == 'cell_mean':
                edge_tables = self._cell_mean(dag, edge_tables)
            for path in dag.paths():
                self._paths.append([edge_tables[k] for k in path])
        self._gather = _PathGather(self._paths)

    def _edge_table(self, module_name: str, label: str) -> tuple[int, np.ndarray, int]:
        if module_name not in self.choice_modules:
            raise ValueError(f'cell_dags() names {module_name!r}, which is not a LayerChoice of the model; '
                             'the space\'s cell_dags() and its modules disagree.')
        table, none_index = np.zeros((len(self.choices[label]), 3)), -1
        for i, value in enumerate(self.choices[label]):
            kind, table[i] = self._candidate_stats(module_name, value)
            if kind == 'none':
                none_index = i
        return self.labels.index(label), table, none_index

    def _cell_mean(self, dag, edge_tables: list[tuple[int, np.ndarray, int]]) -> list[tuple[int, np.ndarray, int]]:
        """The edges' tables replaced by one shared table: each candidate's statistics averaged over the cell."""
        values = {tuple(self.choices[label]) for _, _, label, _ in dag.edges}
        nones = {none_index for _, _, none_index in edge_tables}
        if len(values) != 1 or len(nones) != 1:
            labels = [label for _, _, label, _ in dag.edges]
            detail = (f'{len(values)} different candidate lists ({sorted(values)})' if len(values) != 1 else
                      'the same candidate names, but a different candidate drops the path (none/Zero) on '
                      'different edges')
            raise ValueError(f'AnglePolicy(edges="cell_mean") averages each candidate over the edges of a cell, so '
                             f'every edge of a cell must offer the same candidates in the same order; the cell with '
                             f'edges {labels} has {detail}. Use edges="own".')
        mean = np.mean([table for _, table, _ in edge_tables], axis=0)
        return [(column, mean, none_index) for column, _, none_index in edge_tables]

    def _stats_of(self, encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(encoded) <= _GATHER_MAX:
            return self._gather(encoded)  # few architectures (evolution): one gather over all paths
        stats = np.zeros((len(encoded), 3))  # many (exhaustive ranking): a loop over paths, vectorised over archs
        has_vector = np.zeros(len(encoded), dtype=bool)
        for path in self._paths:
            valid = np.ones(len(encoded), dtype=bool)
            path_stats = np.zeros((len(encoded), 3))
            for column, table, none_index in path:
                valid &= encoded[:, column] != none_index
                path_stats += table[encoded[:, column]]
            stats += path_stats * valid[:, None]
            has_vector |= valid
        return stats, has_vector

    def naive_angle(self, arch: Mapping[str, str]) -> float:
        """The same angle from explicitly concatenated per-path vectors (slow; for tests and benchmarks)."""
        if self.policy.edges != 'own':
            raise ValueError('naive_angle() concatenates each edge\'s own weights, which is the angle of '
                             'AnglePolicy(edges="own") only; edges="cell_mean" has no concatenated form.')
        pieces: list[tuple[str, str]] = []
        for dag in self.cell_dags:
            for path in dag.paths():
                ops = [(dag.edges[k][3], arch[dag.edges[k][2]]) for k in path]
                if all(_op_kind(v, self.choice_modules[m][v]) != 'none' for m, v in ops):
                    pieces.extend(ops)
        return self._naive_from_pieces(pieces, bool(pieces))


def check_policy_fits(model: nn.Module, policy: AnglePolicy, path_aware: bool | None = None) -> None:
    """Refuse a policy the model's scorer cannot compute, so a strategy can say so before training, not at export.

    Parameters
    ----------
    model
        The model space or supernet the angle will be computed on.
    policy
        The :class:`AnglePolicy` to check.
    path_aware
        As for :func:`angle_scorer`: ``False`` forces the per-candidate angle.

    Raises
    ------
    ValueError
        ``policy.edges`` is ``'cell_mean'`` but the model has no ``cell_dags()`` or ``path_aware`` is ``False``:
        averaging over a cell's edges needs the path-aware scorer.
    """
    has_dags = callable(getattr(model, 'cell_dags', None))
    if policy.edges != 'own' and (not has_dags or path_aware is False):
        raise ValueError(f'AnglePolicy(edges={policy.edges!r}) averages candidates over the edges of a cell, which '
                         f'needs the path-aware scorer: {type(model).__name__} '
                         + ('has no cell_dags() method' if not has_dags else 'was asked for path_aware=False')
                         + '. Use edges="own", or a space with cell_dags() and path_aware left on.')


def angle_scorer(model: nn.Module, initial: Mapping[str, torch.Tensor],
                 trained: Mapping[str, torch.Tensor] | None = None, policy: AnglePolicy = AnglePolicy(),
                 path_aware: bool | None = None) -> _AngleScorer:
    """The path-aware scorer when the model exposes ``cell_dags()`` (unless ``path_aware=False``), else generic."""
    check_policy_fits(model, policy, path_aware)
    has_dags = callable(getattr(model, 'cell_dags', None))
    if path_aware and not has_dags:
        raise ValueError(f'{type(model).__name__} has no cell_dags() method, so the path-aware angle cannot be '
                         'computed; use path_aware=False (per-candidate angle) or add cell_dags() to the space.')
    if has_dags and path_aware is not False:
        return PathAngleScorer(model, initial, model.cell_dags(), trained, policy)
    return ChoiceAngleScorer(model, initial, trained, policy)


def plain_architecture(arch: Mapping[str, Any]) -> dict[str, Any]:
    """An architecture whose multi-choice values (tuples while searching) are lists again, as NNI expects."""
    return {label: _plain(value) for label, value in arch.items()}
