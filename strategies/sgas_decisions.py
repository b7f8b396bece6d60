"""SGAS's edge scores and greedy decision schedule, as plain functions and a small state object (no Lightning).

Reference: Guohao Li, Guocheng Qian, Itzel C. Delgadillo, Matthias Muller, Ali Thabet, Bernard Ghanem, "SGAS:
Sequential Greedy Architecture Search", CVPR 2020.

At the end of every epoch, per cell type ("group": the label prefix, e.g. ``normal``/``reduce``), with
``p_e = softmax(alpha_e)`` over an edge's ops:

- edge importance ``S_EI = 1 - p_e(none)``;
- selection certainty ``S_SC = 1 - H(p~_e) / log K``, with ``p~_e`` the distribution over the ``K`` non-``none``
  ops renormalised;
- selection stability (criterion 2) ``S_SS``: the histogram intersection ``sum_o min(p~_h(o), p~_e(o))`` averaged
  over the last ``history_size`` epochs' ``p~``; the current ``p~`` joins the history after scoring;
- criterion 1 scores ``N(S_EI) N(S_SC)``, criterion 2 ``N(S_EI) N(S_SC) N(S_SS)``, ``N`` the min-max
  normalisation over *all* edges of the group, decided ones included (SGAS's code; normalising over the remaining
  candidates only would change the decisions).

A decision is due at the end of epoch ``e`` (0-based) when ``e >= decision_warmup`` and
``(e - decision_warmup) % decision_freq == 0``: each group fixes its best-scoring undecided edge to its strongest
non-``none`` op. In spaces where every node keeps ``inputs_per_node`` inputs (DARTS: 2), a node with that many
decided edges has its other edges pruned (fixed to ``none``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ['NONE_OP', 'EdgeSpec', 'SgasDecisions', 'normalize', 'histogram_intersection', 'edge_scores',
           'decision_epochs']

_logger = logging.getLogger(__name__)

NONE_OP = 'none'
"""Name of the zero op; a pruned edge is "decided" to it."""


@dataclass(frozen=True)
class EdgeSpec:
    """One decidable edge: a ``LayerChoice`` label, its ops, its group (cell type) and destination node.

    ``node`` is ``None`` in spaces without per-node input limits (NAS-Bench-201: no pruning).
    """
    label: str
    ops: tuple[str, ...]
    group: str
    node: int | None = None

    @property
    def real_ops(self) -> tuple[str, ...]:
        """The ops other than ``none``, in the space's order."""
        return tuple(op for op in self.ops if op != NONE_OP)


def normalize(values: np.ndarray) -> np.ndarray:
    """Min-max normalisation to ``[0, 1]``; all zeros when the values are all equal (SGAS's ``normalize``)."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def histogram_intersection(history: Sequence[np.ndarray], current: np.ndarray) -> float:
    """Mean over ``history`` of ``sum(min(h, current))``; 0 for an empty history (SGAS criterion 2)."""
    if not history:
        return 0.0
    return float(np.mean([np.minimum(h, current).sum() for h in history]))


def _entropy(p: np.ndarray) -> float:
    nonzero = p[p > 0]
    return float(-(nonzero * np.log(nonzero)).sum())


def edge_scores(probs: Sequence[np.ndarray], none_index: Sequence[int | None],
                histories: Sequence[Sequence[np.ndarray]] | None = None) -> dict[str, Any]:
    """SGAS's scores of the edges of one group.

    Parameters
    ----------
    probs
        Per edge, its op probabilities ``softmax(alpha)``.
    none_index
        Per edge, the position of its ``none`` op, or ``None`` when it has none: its importance is then 1 (a
        documented extension; SGAS always has ``none``, and a group without any ``none`` is ranked by certainty
        and stability alone).
    histories
        Criterion 2: per edge, its previous epochs' non-``none`` distributions; ``None`` for criterion 1.

    Returns
    -------
    dict
        ``importance``, ``certainty``, ``stability`` (criterion 2 only) and ``score`` arrays, and ``real_probs``
        (per edge, ``p~``).
    """
    real_probs, importance, certainty = [], [], []
    for p, none in zip(probs, none_index):
        p = np.asarray(p, dtype=np.float64)
        real = p if none is None else np.delete(p, none)
        importance.append(real.sum())
        real_probs.append(real / real.sum())
        certainty.append(1 - _entropy(real_probs[-1]) / math.log(len(real)) if len(real) > 1 else 1.0)
    out: dict[str, Any] = {'importance': np.array(importance), 'certainty': np.array(certainty),
                           'real_probs': real_probs}
    score = normalize(out['certainty'])
    if any(none is not None for none in none_index):
        score = normalize(out['importance']) * score
    if histories is not None:
        out['stability'] = np.array([histogram_intersection(h, p) for h, p in zip(histories, real_probs)])
        score = score * normalize(out['stability'])
    out['score'] = score
    return out


def decision_epochs(num_decisions: int, decision_warmup: int, decision_freq: int) -> list[int]:
    """The 0-based epochs at whose end the decisions fall: ``warmup, warmup + freq, ...``."""
    return [decision_warmup + k * decision_freq for k in range(num_decisions)]


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'SGAS: {name} must be an integer >= {minimum}, got {value!r}.')
    return value


class SgasDecisions:
    """SGAS's decision state: which edges are decided (to which op), the criterion-2 history, epochs processed.

    Parameters
    ----------
    edges
        Every decidable edge, in a fixed order (ties go to the earlier edge).
    criterion
        1 (importance x certainty) or 2 (x stability).
    decision_warmup, decision_freq
        Schedule: first decision at the end of epoch ``decision_warmup``, then every ``decision_freq`` epochs.
    history_size
        Criterion 2's window ``K``.
    inputs_per_node
        Inputs a node keeps (DARTS: 2): once that many of its edges are decided, its others are pruned. ``None``:
        no pruning, every edge of a group is decided.
    decisions_per_group
        Decisions per group; default (``None``): all the space needs (``inputs_per_node`` x nodes, or every edge).
    """

    def __init__(self, edges: Sequence[EdgeSpec], *, criterion: int = 1, decision_warmup: int = 9,
                 decision_freq: int = 5, history_size: int = 4, inputs_per_node: int | None = None,
                 decisions_per_group: int | None = None):
        if criterion not in (1, 2):
            raise ValueError(f'SGAS: criterion must be 1 (importance x certainty) or 2 (x stability), got '
                             f'{criterion!r}.')
        self.criterion = criterion
        self.decision_warmup = _check_int('decision_warmup', decision_warmup, 0)
        self.decision_freq = _check_int('decision_freq', decision_freq, 1)
        self.history_size = _check_int('history_size', history_size, 1)
        self.inputs_per_node = None if inputs_per_node is None else _check_int('inputs_per_node', inputs_per_node, 1)
        self.edges = tuple(edges)
        self.groups: dict[str, list[EdgeSpec]] = {}
        for edge in self.edges:
            self.groups.setdefault(edge.group, []).append(edge)
        self.targets = {group: self._target(group, decisions_per_group) for group in self.groups}
        self.decided: dict[str, str] = {}
        self.history: dict[str, list[np.ndarray]] = {edge.label: [] for edge in self.edges}
        self.epochs_done = 0
        self.records: list[dict] = []

    # -- schedule -------------------------------------------------------------------------------------------------
    def _capacity(self, group: str) -> tuple[int, str]:
        edges = self.groups[group]
        if self.inputs_per_node is None:
            return len(edges), f'{len(edges)} edges'
        nodes = sorted({edge.node for edge in edges})
        counts = [sum(edge.node == node for edge in edges) for node in nodes]
        capacity = sum(min(self.inputs_per_node, count) for count in counts)
        return capacity, (f'{len(edges)} edges, of which {self.inputs_per_node} per node x {len(nodes)} nodes '
                          'are kept')

    def _target(self, group: str, requested: int | None) -> int:
        capacity, what = self._capacity(group)
        if requested is None:
            return capacity
        _check_int('decisions_per_cell', requested, 1)
        if requested > capacity:
            raise ValueError(f'SGAS: asked to decide {requested} edges per cell, but cell type {group!r} has only '
                             f'{capacity} decidable edges ({what}). Use decisions_per_cell <= {capacity}, or None '
                             'for all of them.')
        return requested

    @property
    def num_decisions(self) -> int:
        """Decisions of the longest group, i.e. how many decision epochs the schedule needs."""
        return max(self.targets.values(), default=0)

    @property
    def last_decision_epoch(self) -> int:
        """0-based epoch at whose end the last decision falls (``-1`` if there is nothing to decide)."""
        return self.decision_warmup + self.decision_freq * (self.num_decisions - 1) if self.num_decisions else -1

    def check_schedule(self, max_epochs: int | None) -> None:
        """Raise ``ValueError`` when the last decision would fall after ``max_epochs`` epochs."""
        if max_epochs is None or max_epochs < 0 or self.last_decision_epoch < max_epochs:
            return
        needed = self.last_decision_epoch + 1
        raise ValueError(
            f'SGAS: {self.num_decisions} decisions per cell, the first after epoch {self.decision_warmup + 1} and '
            f'then one every {self.decision_freq} epochs, need at least {needed} epochs, but the trainer stops '
            f'after max_epochs={max_epochs}. Raise max_epochs to >= {needed} (SGAS adds a few more to train the '
            'final cell), or lower decision_warmup / decision_freq.')

    def is_due(self, epoch: int) -> bool:
        """Whether the end of 0-based ``epoch`` is a decision point."""
        return epoch >= self.decision_warmup and (epoch - self.decision_warmup) % self.decision_freq == 0

    def made(self, group: str) -> int:
        """Decisions made so far in ``group`` (pruned edges do not count)."""
        return sum(self.decided.get(edge.label, NONE_OP) != NONE_OP for edge in self.groups[group])

    def open_edges(self, group: str) -> list[EdgeSpec]:
        """Edges of ``group`` neither decided nor pruned."""
        return [edge for edge in self.groups[group] if edge.label not in self.decided]

    @property
    def finished(self) -> bool:
        """Every group has made its decisions (or has no open edge left)."""
        return all(self.made(g) >= self.targets[g] or not self.open_edges(g) for g in self.groups)

    # -- one epoch ------------------------------------------------------------------------------------------------
    def end_epoch(self, epoch: int, probs: Mapping[str, Mapping[str, float]]) -> list[dict]:
        """Score every group with ``probs`` (label -> op -> probability), update the history and, when due,
        decide; returns the new decision records (pruned edges included, ``pruned=True``)."""
        new: list[dict] = []
        for group, edges in self.groups.items():
            vectors = [np.array([float(probs[edge.label][op]) for op in edge.ops]) for edge in edges]
            none_index = [edge.ops.index(NONE_OP) if NONE_OP in edge.ops else None for edge in edges]
            histories = [self.history[e.label] for e in edges] if self.criterion == 2 else None
            scores = edge_scores(vectors, none_index, histories)
            for edge, real in zip(edges, scores['real_probs']):
                self.history[edge.label] = (self.history[edge.label] + [real])[-self.history_size:]
            if self.is_due(epoch) and self.made(group) < self.targets[group] and self.open_edges(group):
                new += self._decide(epoch, edges, scores)
        self.epochs_done = max(self.epochs_done, epoch + 1)
        self.records += new
        return new

    def _decide(self, epoch: int, edges: list[EdgeSpec], scores: dict[str, np.ndarray]) -> list[dict]:
        masked = np.array([-np.inf if e.label in self.decided else s for e, s in zip(edges, scores['score'])])
        index = int(np.argmax(masked))
        edge = edges[index]
        op = edge.real_ops[int(np.argmax(scores['real_probs'][index]))]
        self.decided[edge.label] = op
        record = {'epoch': int(epoch), 'label': edge.label, 'op': op, 'score': float(masked[index]), 'pruned': False}
        _logger.info('SGAS epoch %d: %s -> %s (score %.4f)', epoch, edge.label, op, masked[index])
        return [record] + self._prune(epoch, edge)

    def _prune(self, epoch: int, decided: EdgeSpec) -> list[dict]:
        if self.inputs_per_node is None:
            return []
        siblings = [e for e in self.groups[decided.group] if e.node == decided.node]
        kept = sum(self.decided.get(e.label, NONE_OP) != NONE_OP for e in siblings)
        if kept < self.inputs_per_node:
            return []
        pruned = [e for e in siblings if e.label not in self.decided]
        for edge in pruned:
            self.decided[edge.label] = NONE_OP
        return [{'epoch': int(epoch), 'label': e.label, 'op': NONE_OP, 'score': float('nan'), 'pruned': True}
                for e in pruned]

    # -- export ---------------------------------------------------------------------------------------------------
    def export(self, probs: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
        """The architecture: decided edges as decided; open edges filled as SGAS's ``get_genotype(force=True)``:
        per node the strongest open edges (by their best non-``none`` op) take the free input slots, each with
        that op, the rest ``none``; without per-node limits every open edge takes its best non-``none`` op."""
        arch = dict(self.decided)
        for group, edges in self.groups.items():
            open_edges = self.open_edges(group)
            if self.inputs_per_node is None:
                arch.update({e.label: _best_real_op(e, probs) for e in open_edges})
                continue
            for node in sorted({e.node for e in open_edges}):
                arch.update(self._fill_node(group, node, open_edges, probs))
        return {edge.label: arch[edge.label] for edge in self.edges}

    def _fill_node(self, group: str, node: int, open_edges: list[EdgeSpec],
                   probs: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
        kept = sum(self.decided.get(e.label, NONE_OP) != NONE_OP for e in self.groups[group] if e.node == node)
        candidates = [e for e in open_edges if e.node == node]
        strength = [-max(float(probs[e.label][op]) for op in e.real_ops) for e in candidates]
        order = [candidates[i] for i in np.argsort(strength, kind='stable')]
        slots = max(self.inputs_per_node - kept, 0)
        return {e.label: (_best_real_op(e, probs) if rank < slots else NONE_OP) for rank, e in enumerate(order)}

    # -- checkpoint -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain values only (``torch.load(weights_only=True)`` reads them)."""
        return {'decided': dict(self.decided), 'epochs_done': int(self.epochs_done),
                'history': {label: [h.tolist() for h in hist] for label, hist in self.history.items()},
                'records': [dict(r) for r in self.records], 'criterion': self.criterion}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses a state from another space (unknown labels or ops)."""
        known = {edge.label: edge for edge in self.edges}
        for label, op in state['decided'].items():
            if label not in known or op not in known[label].ops:
                raise ValueError(f'SGAS checkpoint decides {label!r} -> {op!r}, which this supernet does not have. '
                                 'Resume with the space the checkpoint was searched on.')
        self.decided = dict(state['decided'])
        self.epochs_done = int(state['epochs_done'])
        self.history = {label: [np.asarray(h, dtype=np.float64) for h in state['history'].get(label, [])]
                        for label in known}
        self.records = [dict(r) for r in state.get('records', [])]


def _best_real_op(edge: EdgeSpec, probs: Mapping[str, Mapping[str, float]]) -> str:
    real = edge.real_ops
    return real[int(np.argmax([float(probs[edge.label][op]) for op in real]))]
