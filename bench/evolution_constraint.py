"""RLNAS's evolutionary search under a FLOPs limit on the DARTS and MobileNet-like spaces: wall time and legality.

Per space: a supernet with randomly perturbed weights stands in for a trained one (the evolution's cost does not
depend on how the weights got there), its RLNAS angle (DARTS: path-aware, pool = 1/9 constant + BN, skip = eye(C);
MobileNet: per block, skip = eye(C)) is the fitness, and NNI's profiler on an un-mutated copy of the space gives
the FLOPs. The evolution is RLNAS's DARTS/MobileNet setting (population 50, top-10, 25 mutants + 25 crossovers,
mutation probability 0.1, 20 generations; DARTS candidates repaired to two inputs per node).

- DARTS: RLNAS's DARTS-CIFAR supernet (C=16, 8 cells, affine BN) at 32 px; the paper sets no FLOPs limit there, so
  the limit is the median of 200 random architectures (about half are rejected).
- MobileNet: RLNAS's full space (21 blocks, widths 40 ... 1728) at 224 px under the paper's 475M limit (NNI counts
  BN and activations too, so the limit is a little stricter than RLNAS's MAC table).

    python -m bench.evolution_constraint --out bench/results/evolution_constraint.json
"""
from __future__ import annotations

import argparse
import logging
import random
import statistics
import time
import warnings
from typing import Any, Callable

import torch

from nni.nas.oneshot.pytorch.strategy import RandomOneShot

from nni_labelfree.metrics.angle import AnglePolicy, angle_scorer, parameter_snapshot
from nni_labelfree.search_spaces import DartsSpace, MobileNetSpace
from nni_labelfree.search_spaces.darts import random_darts_sample
from nni_labelfree.selection import DARTS_EVOLUTION, ProfilerConstraint, evolve

from bench.common import emit_json

_logger = logging.getLogger(__name__)


class CountingConstraint:
    """A constraint that counts and times its calls: legality checks, and the ``value()`` calls through which the
    evolution tracks the smallest value of rejected candidates (for its "cannot be met" message)."""

    def __init__(self, constraint: ProfilerConstraint):
        self.constraint, self.calls, self.rejected, self.seconds = constraint, 0, 0, 0.0
        self.value_calls, self.value_seconds = 0, 0.0
        self.limit = constraint.limit

    def value(self, arch: dict) -> dict:
        start = time.perf_counter()
        value = self.constraint.value(arch)
        self.value_seconds += time.perf_counter() - start
        self.value_calls += 1
        return value

    def __call__(self, arch: dict) -> bool:
        start = time.perf_counter()
        legal = self.constraint(arch)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.rejected += not legal
        return legal

    def __repr__(self) -> str:
        return repr(self.constraint)


def _perturbed(space: torch.nn.Module) -> dict:
    """Mutate ``space`` into an SPOS supernet, snapshot its weights, then perturb them as training would."""
    RandomOneShot().mutate_model(space)
    initial = parameter_snapshot(space)
    with torch.no_grad():
        for p in space.parameters():
            p.mul_(0.9).add_(0.1 * torch.randn_like(p))
    return initial


def _random_mobilenet(space: MobileNetSpace) -> Callable[[random.Random], dict]:
    choices = dict(space.block_choices)
    return lambda rng: {label: rng.choice(values) for label, values in choices.items()}


def run_space(name: str, build: Callable[[], Any], image: int, max_flops: float | None, sample, repair,
              seed: int) -> dict:
    """Trace, score and evolve one space; ``max_flops=None`` takes the median FLOPs of 200 random archs."""
    start = time.perf_counter()
    constraint = ProfilerConstraint(build(), torch.randn(1, 3, image, image), max_flops=1)
    trace = time.perf_counter() - start
    rng = random.Random(seed)
    flops = sorted(constraint.value(sample(rng))['flops'] for _ in range(200))
    constraint.limit['flops'] = max_flops if max_flops is not None else statistics.median(flops)
    legal_share = sum(f <= constraint.limit['flops'] for f in flops) / len(flops)
    torch.manual_seed(seed)  # the supernet's initial weights and their perturbation
    supernet = build()
    start = time.perf_counter()
    initial = _perturbed(supernet)
    scorer = angle_scorer(supernet, initial, policy=AnglePolicy(**type(supernet).angle_policy_defaults))
    precompute = time.perf_counter() - start
    counting = CountingConstraint(constraint)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = evolve(scorer.choices, scorer.angle, constraint=counting, repair=repair, seed=seed, **DARTS_EVOLUTION)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    free = evolve(scorer.choices, scorer.angle, repair=repair, seed=seed, **DARTS_EVOLUTION)
    result_flops = [constraint.value(arch)['flops'] for arch, _ in result.ranked]
    return {'space': name, 'image_size': image, 'profiler_trace_seconds': trace,
            'angle_precompute_seconds': precompute, 'max_flops': constraint.limit['flops'],
            'random_archs_within_limit': legal_share, 'random_flops_min_median_max': [flops[0], flops[100], flops[-1]],
            'evolution_seconds': wall, 'evolution_cpu_seconds': cpu, 'num_evaluated': result.num_evaluated,
            'constraint_calls': counting.calls, 'constraint_rejections': counting.rejected,
            'constraint_seconds': counting.seconds, 'constraint_value_calls': counting.value_calls,
            'constraint_value_seconds': counting.value_seconds, 'best_angle': result.best_fitness,
            'best_flops': result_flops[0], 'max_result_flops': max(result_flops),
            'all_results_within_limit': max(result_flops) <= constraint.limit['flops'],
            'unconstrained_best_angle': free.best_fitness,
            'unconstrained_best_flops': constraint.value(free.best)['flops'], **dict(DARTS_EVOLUTION)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--darts-width', type=int, default=16)
    parser.add_argument('--darts-cells', type=int, default=8)
    parser.add_argument('--darts-image-size', type=int, default=32)
    parser.add_argument('--mobilenet-width-mult', type=float, default=1.0)
    parser.add_argument('--mobilenet-image-size', type=int, default=224)
    parser.add_argument('--mobilenet-max-flops', type=float, default=475e6)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    warnings.filterwarnings('ignore')
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    darts = run_space(f'darts C={args.darts_width} cells={args.darts_cells} affine',
                      lambda: DartsSpace(width=args.darts_width, num_cells=args.darts_cells, affine=True),
                      args.darts_image_size, None, random_darts_sample, DartsSpace.repair, args.seed)
    mobilenet_space = lambda: MobileNetSpace(width_mult=args.mobilenet_width_mult)  # noqa: E731
    mobilenet = run_space(f'mobilenet width_mult={args.mobilenet_width_mult:g} 21 blocks', mobilenet_space,
                          args.mobilenet_image_size, args.mobilenet_max_flops,
                          _random_mobilenet(mobilenet_space()), None, args.seed)
    emit_json({'threads': torch.get_num_threads(), 'results': [darts, mobilenet]}, args.out)


if __name__ == '__main__':
    main()
