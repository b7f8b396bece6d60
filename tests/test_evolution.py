"""Evolutionary search (SPOS/RLNAS mechanics) and FLOPs/params constraints."""
import json
import math
from collections import Counter

import pytest
import torch
from torch import nn

from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni_labelfree.selection import (
    NB201_EVOLUTION, FunctionConstraint, ProfilerConstraint, crossover, evolve, mutate, rank_exhaustive,
    space_choices,
)

GENES = {f'g{i}': [0, 1, 2, 3, 4] for i in range(6)}  # 15,625 archs, like NAS-Bench-201


def total(arch):
    return float(sum(arch.values()))


class TinySpace(ModelSpace):
    """Two searchable convs and a linear head; 8x8 inputs keep the hand-computed FLOPs small."""

    def __init__(self):
        super().__init__()
        self.conv1 = LayerChoice({'k3': nn.Conv2d(3, 8, 3, padding=1), 'k5': nn.Conv2d(3, 8, 5, padding=2)},
                                 label='conv1')
        self.conv2 = LayerChoice({'k1': nn.Conv2d(8, 8, 1), 'k3': nn.Conv2d(8, 8, 3, padding=1)}, label='conv2')
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(x.mean((2, 3)))


def _golden(k1, k2):
    """Hand count on 1x3x8x8 (functional ReLU and mean are not counted by NNI): conv = cout*HW*(cin*k^2+1)."""
    conv1_params, conv2_params, fc_params = 8 * (3 * k1 ** 2 + 1), 8 * (8 * k2 ** 2 + 1), 10 * (8 + 1)
    return {'flops': 64 * (conv1_params + conv2_params) + fc_params,
            'params': conv1_params + conv2_params + fc_params}


@pytest.fixture(scope='module')
def tiny_constraint():
    return ProfilerConstraint(TinySpace(), torch.randn(1, 3, 8, 8), max_params=1000)


def test_profiler_constraint_matches_hand_count(tiny_constraint):
    assert _golden(5, 3) == {'flops': 76378, 'params': 1282}
    assert tiny_constraint.value({'conv1': 'k5', 'conv2': 'k3'}) == _golden(5, 3)
    assert tiny_constraint.value({'conv1': 'k3', 'conv2': 'k1'}) == _golden(3, 1)
    assert not tiny_constraint({'conv1': 'k5', 'conv2': 'k3'})
    assert tiny_constraint({'conv1': 'k3', 'conv2': 'k3'})  # 224 + 584 + 90 = 898 params
    assert tiny_constraint.limit == {'params': 1000.0}


def test_profiler_constraint_errors(tiny_constraint):
    with pytest.raises(ValueError, match='max_flops and/or max_params'):
        ProfilerConstraint(TinySpace(), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match='conv2'):
        tiny_constraint.value({'conv1': 'k5'})
    with pytest.raises(ValueError, match='k7'):
        tiny_constraint.value({'conv1': 'k7', 'conv2': 'k1'})
    with pytest.raises(TypeError, match='ModelSpace'):
        ProfilerConstraint(nn.Linear(2, 2), torch.randn(1, 2), max_flops=10)


def test_profiler_constraint_rejects_a_supernet():
    from nni.nas.oneshot.pytorch.strategy import RandomOneShot

    space = TinySpace()
    RandomOneShot().mutate_model(space)
    with pytest.raises(ValueError, match='un-mutated'):
        ProfilerConstraint(space, torch.randn(1, 3, 8, 8), max_flops=1e6)


def test_evolve_on_a_model_space_respects_profiler_limits(tiny_constraint):
    choices = space_choices(TinySpace())
    assert choices == {'conv1': ['k3', 'k5'], 'conv2': ['k1', 'k3']}
    flops = ProfilerConstraint(TinySpace(), torch.randn(1, 3, 8, 8), max_flops=_golden(3, 3)['flops'])
    result = evolve(choices, lambda a: tiny_constraint.value(a)['params'], constraint=flops,
                    population_size=4, generations=2)
    assert result.best == {'conv1': 'k3', 'conv2': 'k3'}
    # FLOPs: k3/k1 19,034, k5/k1 43,610, k3/k3 51,802 (the limit), k5/k3 76,378 (illegal).
    assert sorted(tuple(a.values()) for a, _ in result.ranked) == [('k3', 'k1'), ('k3', 'k3'), ('k5', 'k1')]


def test_unsatisfiable_profiler_constraint_reports_smallest_value():
    tight = ProfilerConstraint(TinySpace(), torch.randn(1, 3, 8, 8), max_params=100)
    with pytest.raises(ValueError, match="cannot be met.*'params': 386.0"):
        evolve(space_choices(TinySpace()), lambda a: 0.0, constraint=tight)


def test_finds_optimum_of_separable_fitness():
    for seed in range(3):
        result = evolve(GENES, total, seed=seed, **NB201_EVOLUTION)
        assert result.best == {g: 4 for g in GENES} and result.best_fitness == 24.0
        assert result.num_evaluated < 15625 / 2


def test_result_is_valid_ranked_and_json_friendly():
    result = evolve(GENES, total, population_size=20, top_k=5, num_mutation=10, num_crossover=10, generations=3)
    assert set(result.best) == set(GENES) and all(result.best[g] in GENES[g] for g in GENES)
    fits = [f for _, f in result.ranked]
    assert fits == sorted(fits, reverse=True) and result.best_fitness == fits[0]
    assert len(result.ranked) == result.num_evaluated == len({tuple(a.values()) for a, _ in result.ranked})
    assert [h['generation'] for h in result.history] == [0, 1, 2, 3]
    assert all(h['best_fitness'] <= nxt['best_fitness'] for h, nxt in zip(result.history, result.history[1:]))
    assert json.loads(json.dumps(result.to_dict()))['best'] == result.best


def test_constraint_respected_everywhere_and_never_evaluated_when_illegal():
    constraint = FunctionConstraint(total, 10, 'sum')

    def fitness(arch):
        assert total(arch) <= 10, 'fitness called on an illegal architecture'
        return total(arch) - 0.1 * arch['g0']

    result = evolve(GENES, fitness, constraint=constraint, seed=3)
    assert all(total(a) <= 10 for a, _ in result.ranked)
    assert total(result.best) == 10 and result.best['g0'] == 0


def test_deterministic_for_a_seed():
    run = lambda seed: evolve(GENES, total, seed=seed, generations=3).to_dict()  # noqa: E731
    assert run(7) == run(7)
    assert run(7)['ranked'] != run(8)['ranked']


def test_fitness_called_once_per_distinct_arch():
    calls = Counter()

    def fitness(arch):
        calls[tuple(sorted(arch.items()))] += 1
        return total(arch)

    small = {'a': [0, 1], 'b': [0, 1, 2]}  # 6 archs: duplicates are certain
    result = evolve(small, fitness, population_size=4, top_k=2, num_mutation=4, num_crossover=4,
                    mutation_prob=0.5, generations=5)
    assert set(calls.values()) == {1}
    assert result.num_evaluated == len(calls) == 6
    assert result.best == {'a': 1, 'b': 2}


def test_unsatisfiable_constraint_raises_with_smallest_value():
    constraint = FunctionConstraint(lambda a: total(a) + 3, 1, 'cost')
    small = {'a': [2, 0, 1], 'b': [1, 0]}  # 6 archs, all seen: the smallest cost is 0 + 0 + 3
    with pytest.raises(ValueError, match=r'cannot be met.*Smallest constrained value seen: 3\.0; limit: 1\.0'):
        evolve(small, total, constraint=constraint)
    with pytest.raises(ValueError, match='cannot be met'):
        evolve(GENES, total, constraint=lambda a: False, max_tries=50)


def test_each_candidate_is_measured_once_by_the_constraint():
    measured = Counter()

    def cost(arch):
        measured[tuple(sorted(arch.items()))] += 1
        return total(arch)

    result = evolve(GENES, total, constraint=FunctionConstraint(cost, 12, 'cost'), population_size=20, top_k=5,
                    num_mutation=10, num_crossover=10, generations=4, seed=0)
    assert measured and set(measured.values()) == {1}  # rejected ones too: profiling is what a tight limit costs
    assert all(total(a) <= 12 for a, _ in result.ranked)


def test_mutation_choices_respected():
    genes = {f'g{i}': list(range(10)) for i in range(8)}
    zeros = {g: 0 for g in genes}
    # Population 1 and no crossover: after the initial arch every candidate comes from mutation (prob 1).
    result = evolve(genes, total, population_size=1, top_k=1, num_mutation=5, num_crossover=0,
                    mutation_prob=1.0, generations=4, initial=[zeros], mutation_choices={g: [1, 2] for g in genes})
    assert result.ranked[-1] == (zeros, 0.0)
    assert len(result.ranked) == 21
    assert all(set(a.values()) <= {1, 2} for a, _ in result.ranked[:-1])


def test_mutate_and_crossover_operators():
    import random

    rng = random.Random(0)
    parent = {'a': 'none', 'b': 'none'}
    children = [mutate(parent, {'a': ['conv']}, 1.0, rng) for _ in range(20)]
    assert all(c == {'a': 'conv', 'b': 'none'} for c in children)
    assert mutate(parent, {'a': ['conv'], 'b': ['conv']}, 0.0, rng) == parent
    kids = [crossover({'a': 0, 'b': 0}, {'a': 1, 'b': 1}, rng) for _ in range(50)]
    assert {tuple(k.values()) for k in kids} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_repair_and_initial_are_applied():
    def repair(arch, rng):
        return {**arch, 'g0': 0}

    start = {g: 1 for g in GENES}
    result = evolve(GENES, total, repair=repair, initial=[start], generations=2)
    assert all(a['g0'] == 0 for a, _ in result.ranked)
    assert any(a == {**start, 'g0': 0} for a, _ in result.ranked)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match='mutation_choices'):
        evolve(GENES, total, mutation_choices={'g0': [9]})
    with pytest.raises(ValueError, match='not in choices'):
        evolve(GENES, total, mutation_choices={'zz': [0]})
    with pytest.raises(ValueError, match='top_k'):
        evolve(GENES, total, top_k=0)
    with pytest.raises(ValueError, match='mutation_prob'):
        evolve(GENES, total, mutation_prob=1.5)
    with pytest.raises(ValueError, match='non-empty'):
        evolve({'g0': []}, total)
    with pytest.raises(ValueError, match='outside the choices'):
        evolve(GENES, total, repair=lambda a, rng: {**a, 'g0': 99})


def test_nan_fitness_ranks_last():
    result = evolve({'a': [0, 1, 2]}, lambda a: math.nan if a['a'] == 2 else float(a['a']), generations=1)
    assert [a['a'] for a, _ in result.ranked] == [1, 0, 2]
    assert result.to_dict()['ranked'][-1]['fitness'] is None


def test_rank_exhaustive_ties_keep_input_order():
    archs = [{'x': i} for i in range(5)]
    assert rank_exhaustive(archs, [0.5, 0.9, 0.5, math.nan, 0.9]) == [1, 4, 0, 2, 3]
    with pytest.raises(ValueError, match='one score per architecture'):
        rank_exhaustive(archs, [1.0, 2.0])
