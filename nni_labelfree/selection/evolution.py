"""SPOS/RLNAS-style evolutionary search over any discrete search space, with hard constraints.

The fitness is a plain callable ``arch -> float`` (higher is better), so the RLNAS angle, a linear-evaluation
accuracy or a validation accuracy plug in the same way. Mechanics follow the evolution of SPOS (Guo et al.,
"Single Path One-Shot Neural Architecture Search with Uniform Sampling", ECCV 2020) as used by RLNAS (Zhang et
al., "Neural Architecture Search with Random Labels", CVPR 2021); see ``docs/methods.md`` section 1.5:

1. generation 0 is a random population of legal architectures (plus any ``initial`` ones);
2. every distinct architecture is evaluated once (a visited set also remembers the illegal ones);
3. a global archive keeps the ``top_k`` best architectures seen so far (merge, sort by fitness, truncate);
4. each generation breeds ``num_mutation`` mutants (random top-k parent, each gene resampled with probability
   ``mutation_prob``) and ``num_crossover`` children (uniform gene-wise crossover of two random top-k parents),
   then fills up to ``population_size`` with random architectures if short. Candidates that were seen before
   or fail the constraint are discarded without evaluation, as in SPOS's ``is_legal``.

Unlike SPOS, the population bred by the last generation is merged too: ``generations`` rounds of breeding give
``generations + 1`` evaluated populations, and the answer is the best of everything evaluated.
"""
from __future__ import annotations

import logging
import math
import random
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from nni_labelfree.metrics.correlation import descending_order

__all__ = ['evolve', 'EvolutionResult', 'NB201_EVOLUTION', 'DARTS_EVOLUTION', 'rank_exhaustive', 'space_choices',
           'mutate', 'crossover']

_logger = logging.getLogger(__name__)

# methods.md 1.5: RLNAS's NB201 search (top-k hard-coded to 30) and its DARTS/MobileNet setting (= our defaults).
NB201_EVOLUTION = types.MappingProxyType(dict(population_size=100, top_k=30, num_mutation=50, num_crossover=50,
                                              mutation_prob=0.1, generations=20))
DARTS_EVOLUTION = types.MappingProxyType(dict(population_size=50, top_k=10, num_mutation=25, num_crossover=25,
                                              mutation_prob=0.1, generations=20))

Arch = dict


@dataclass
class EvolutionResult:
    """Outcome of :func:`evolve`.

    Attributes
    ----------
    best
        The best architecture evaluated (first evaluated wins a tie).
    best_fitness
        Its fitness.
    ranked
        ``(arch, fitness)`` for every evaluated legal architecture, fitness descending (NaN last), ties in
        evaluation order.
    history
        One dict per generation (0 = initial population): ``generation``, ``best_fitness`` (of the archive),
        ``mean_fitness`` (of that generation's new population), ``population_size``, ``num_evaluated``.
    num_evaluated
        Number of fitness calls (= distinct legal architectures evaluated).
    """

    best: Arch
    best_fitness: float
    ranked: list[tuple[Arch, float]]
    history: list[dict[str, float]] = field(default_factory=list)
    num_evaluated: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (NaN fitness becomes ``None``)."""
        def num(x: float) -> float | None:
            return None if isinstance(x, float) and math.isnan(x) else x
        return {
            'best': dict(self.best), 'best_fitness': num(self.best_fitness),
            'ranked': [{'arch': dict(a), 'fitness': num(f)} for a, f in self.ranked],
            'history': [{k: num(v) for k, v in h.items()} for h in self.history],
            'num_evaluated': self.num_evaluated,
        }


def mutate(parent: Mapping[str, Any], choices: Mapping[str, Sequence], prob: float, rng: random.Random) -> Arch:
    """Copy of ``parent`` with each gene resampled from ``choices[label]`` with probability ``prob``.

    ``choices`` may cover a subset of the labels (other genes are kept); a resampled gene may draw its old value.
    """
    child = dict(parent)
    for label in parent:
        if rng.random() < prob and label in choices:
            child[label] = rng.choice(choices[label])
    return child


def crossover(parent_a: Mapping[str, Any], parent_b: Mapping[str, Any], rng: random.Random) -> Arch:
    """Uniform gene-wise crossover: each gene from either parent with probability 1/2."""
    return {label: (parent_a[label] if rng.random() < 0.5 else parent_b[label]) for label in parent_a}


def _normalise_choices(choices: Mapping[str, Sequence], name: str,
                       within: Mapping[str, list] | None = None) -> dict[str, list]:
    if not isinstance(choices, Mapping) or (within is None and not choices):
        raise ValueError(f'{name} must be a non-empty mapping label -> sequence of values, got {choices!r}.')
    out = {}
    for label, values in choices.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f'{name}[{label!r}] must be a non-empty sequence of values, got {values!r}.')
        if within is not None:
            if label not in within:
                raise ValueError(f'{name} has label {label!r} that is not in choices {list(within)}.')
            bad = [v for v in values if v not in within[label]]
            if bad:
                raise ValueError(f'{name}[{label!r}] has values {bad} outside choices {within[label]}.')
        out[label] = list(values)
    return out


def _check_settings(population_size: int, top_k: int, num_mutation: int, num_crossover: int,
                    mutation_prob: float, generations: int, max_tries: int) -> None:
    positive = dict(population_size=population_size, top_k=top_k, max_tries=max_tries)
    non_negative = dict(num_mutation=num_mutation, num_crossover=num_crossover, generations=generations)
    for name, val in positive.items():
        if int(val) != val or val < 1:
            raise ValueError(f'{name} must be a positive integer, got {val!r}.')
    for name, val in non_negative.items():
        if int(val) != val or val < 0:
            raise ValueError(f'{name} must be a non-negative integer, got {val!r}.')
    if not 0.0 <= mutation_prob <= 1.0:
        raise ValueError(f'mutation_prob must lie in [0, 1], got {mutation_prob!r}.')


class _Search:
    """Bookkeeping of one evolutionary search: visited set, evaluations, constraint statistics."""

    def __init__(self, choices: dict[str, list], fitness: Callable[[dict], float],
                 constraint: Callable[[dict], bool] | None, repair: Callable[[dict, random.Random], dict] | None,
                 rng: random.Random):
        self.choices, self.labels = choices, tuple(choices)
        self.fitness, self.constraint, self.repair, self.rng = fitness, constraint, repair, rng
        self.fit: dict[tuple, float] = {}  # insertion order = evaluation order
        self.archs: dict[tuple, Arch] = {}
        self.illegal: set[tuple] = set()
        self.smallest: Any = None
        self.space_size = math.prod(len(v) for v in choices.values())

    def check_arch(self, arch: Any, source: str) -> Arch:
        if not isinstance(arch, Mapping) or set(arch) != set(self.labels):
            got = sorted(arch) if isinstance(arch, Mapping) else type(arch).__name__
            raise ValueError(f'{source} produced {got}; expected a dict with exactly the labels {list(self.labels)}.')
        bad = {k: v for k, v in arch.items() if v not in self.choices[k]}
        if bad:
            raise ValueError(f'{source} produced values {bad} outside the choices; expected values from '
                             f'{ {k: self.choices[k] for k in bad} }.')
        return {label: arch[label] for label in self.labels}

    def consider(self, arch: Arch, source: str) -> tuple | None:
        """Repair, check and evaluate ``arch``; return its key if it was new and legal, else None."""
        if self.repair is not None:
            arch = self.repair(dict(arch), self.rng)
        arch = self.check_arch(arch, f'repair() after {source}' if self.repair else source)
        key = tuple(arch[label] for label in self.labels)
        if key in self.fit or key in self.illegal:
            return None
        if self.constraint is not None and not self._legal(arch):
            self.illegal.add(key)
            return None
        self.fit[key], self.archs[key] = float(self.fitness(dict(arch))), arch
        return key

    def _legal(self, arch: Arch) -> bool:
        """The constraint's verdict; a constraint with ``value`` and ``admits`` is measured once per candidate
        (profiling dominates the search under a tight limit), and rejected values feed the smallest-seen report."""
        value_fn, admits = getattr(self.constraint, 'value', None), getattr(self.constraint, 'admits', None)
        if not (callable(value_fn) and callable(admits)):
            legal = bool(self.constraint(arch))
            if not legal and callable(value_fn):
                self._track_smallest(value_fn(arch))
            return legal
        value = value_fn(arch)
        if admits(value):
            return True
        self._track_smallest(value)
        return False

    def _track_smallest(self, value: Any) -> None:
        if isinstance(value, Mapping):
            old = self.smallest or {}
            self.smallest = {k: min(v, old.get(k, v)) for k, v in value.items()}
        else:
            self.smallest = value if self.smallest is None else min(self.smallest, value)

    def exhausted(self) -> bool:
        return len(self.fit) + len(self.illegal) >= self.space_size

    def sort_key(self, key: tuple) -> tuple:
        f = self.fit[key]
        return (math.isnan(f), -f if not math.isnan(f) else 0.0)  # sorted() is stable: ties keep eval order

    def random_fill(self, population: list[tuple], target: int, max_tries: int) -> None:
        tries = 0
        while len(population) < target and tries < max_tries and not self.exhausted():
            tries += 1
            key = self.consider({lab: self.rng.choice(vals) for lab, vals in self.choices.items()}, 'sampling')
            if key is not None:
                population.append(key)
        if not self.fit:
            limit = getattr(self.constraint, 'limit', None)
            raise ValueError(
                f'The constraint {self.constraint!r} cannot be met: no legal architecture in {tries} random samples '
                f'({len(self.illegal)} distinct candidates rejected). Smallest constrained value seen: '
                f'{self.smallest}; limit: {limit}. Relax the limit, raise max_tries, or pass initial= / repair= '
                f'producing legal architectures.')

    def breed(self, count: int, make: Callable[[], Arch], source: str) -> list[tuple]:
        out: list[tuple] = []
        tries = 0
        while len(out) < count and tries < 10 * count and not self.exhausted():  # SPOS: at most 10x attempts
            tries += 1
            key = self.consider(make(), source)
            if key is not None:
                out.append(key)
        return out


def _next_population(search: _Search, archive: list[tuple], mutation_choices: dict[str, list], prob: float,
                     num_mutation: int, num_crossover: int) -> list[tuple]:
    rng = search.rng
    parents = [search.archs[k] for k in archive]
    mutants = search.breed(num_mutation,
                           lambda: mutate(rng.choice(parents), mutation_choices, prob, rng), 'mutation')
    children = search.breed(num_crossover,
                            lambda: crossover(rng.choice(parents), rng.choice(parents), rng), 'crossover')
    return mutants + children


def evolve(choices: Mapping[str, Sequence], fitness: Callable[[dict], float], *,
           constraint: Callable[[dict], bool] | None = None, population_size: int = 50, top_k: int = 10,
           num_mutation: int = 25, num_crossover: int = 25, mutation_prob: float = 0.1, generations: int = 20,
           seed: int = 0, mutation_choices: Mapping[str, Sequence] | None = None,
           repair: Callable[[dict, random.Random], dict] | None = None, initial: Sequence[Mapping] = (),
           max_tries: int = 10000) -> EvolutionResult:
    """Maximise ``fitness`` over the architectures ``choices`` spans, subject to ``constraint``.

    Parameters
    ----------
    choices
        Label -> candidate values (e.g. :func:`space_choices` of an NNI space, or ``nb201_choices()``).
    fitness
        Arch dict -> float, higher is better; called exactly once per distinct legal architecture.
    constraint
        Arch dict -> bool; illegal candidates are never evaluated and never enter the population. If it has
        ``value(arch)``/``limit`` (see :mod:`.constraints`), an unsatisfiable constraint reports the smallest value.
    population_size, top_k, num_mutation, num_crossover, mutation_prob, generations
        SPOS settings; defaults are RLNAS's DARTS/MobileNet row, ``**NB201_EVOLUTION`` gives its NB201 row.
    seed
        Seeds the search's own ``random.Random``; same inputs and seed give the same result.
    mutation_choices
        Values mutation may draw per label (labels left out use ``choices``); RLNAS excludes ``none`` on NB201.
        The random population and crossover still use the full ``choices``.
    repair
        ``(arch, rng) -> arch`` applied to every sampled, mutated or crossed-over candidate before any check.
    initial
        Architectures evaluated first (illegal ones are skipped with a warning).
    max_tries
        Random samples per fill before giving up; a ``ValueError`` is raised if nothing legal was ever found.
    """
    _check_settings(population_size, top_k, num_mutation, num_crossover, mutation_prob, generations, max_tries)
    choices = _normalise_choices(choices, 'choices')
    mut_choices = {**choices, **_normalise_choices(mutation_choices or {}, 'mutation_choices', within=choices)}
    search = _Search(choices, fitness, constraint, repair, random.Random(seed))
    population = [k for k in (search.consider(dict(a), 'initial') for a in initial) if k is not None]
    if len(population) < len(initial):
        _logger.warning('%d of %d initial architectures were illegal or duplicates and were skipped.',
                        len(initial) - len(population), len(initial))
    search.random_fill(population, population_size, max_tries)
    archive: list[tuple] = []
    history = []
    for generation in range(generations + 1):
        archive = sorted(archive + population, key=search.sort_key)[:top_k]
        pop_fit = [search.fit[k] for k in population]
        history.append({'generation': generation, 'best_fitness': search.fit[archive[0]],
                        'mean_fitness': float(np.mean(pop_fit)) if pop_fit else float('nan'),
                        'population_size': len(population), 'num_evaluated': len(search.fit)})
        _logger.info('generation %d: best %.6g, %d evaluated', generation, history[-1]['best_fitness'],
                     len(search.fit))
        if generation == generations:
            break
        population = _next_population(search, archive, mut_choices, mutation_prob, num_mutation, num_crossover)
        search.random_fill(population, population_size, max_tries)
    ranked = [(dict(search.archs[k]), search.fit[k]) for k in sorted(search.fit, key=search.sort_key)]
    return EvolutionResult(best=dict(ranked[0][0]), best_fitness=ranked[0][1], ranked=ranked, history=history,
                           num_evaluated=len(search.fit))


def rank_exhaustive(archs: Sequence[Mapping], scores: Sequence[float] | np.ndarray) -> list[int]:
    """Indices of ``archs`` by score descending; ties keep input order, NaN scores go last.

    For spaces small enough to score every architecture (NAS-Bench-201's 15,625 cells) instead of evolving.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1 or len(scores) != len(archs):
        raise ValueError(f'Expected one score per architecture: got {len(archs)} archs and scores of shape '
                         f'{scores.shape}.')
    return [int(i) for i in descending_order(scores)]


def space_choices(model_space: Any) -> dict[str, list[Hashable]]:
    """Label -> candidate values of an NNI ``ModelSpace`` (categorical choices only), in NNI's label order."""
    from nni.mutable import Categorical

    out = {}
    for label, mutable in model_space.simplify().items():
        if not isinstance(mutable, Categorical):
            raise TypeError(f'Label {label!r} is a {type(mutable).__name__}; evolve() needs categorical choices '
                            f'(LayerChoice, InputChoice, nni.choice). Discretise it or pass choices by hand.')
        out[label] = list(mutable.values)
    return out
