"""RLNAS on the DARTS cell space: angle evaluations per second (decomposed vs naive) and constrained evolution time.

The supernet is DARTS-CIFAR's (C=16, 8 cells, affine BN) with perturbed weights standing in for a trained one; the
angle is the path-aware one with RLNAS's DARTS policy (pool = 1/9 constant + BN, skip = eye(C)). The evolution is
RLNAS's DARTS setting (population 50, top-10, 25 + 25, 0.1, 20 generations) with ``check_cand`` repair, under a
FLOPs limit from NNI's profiler (default: the median of random architectures, so about half are rejected).

    python -m bench.rlnas_darts --out bench/results/rlnas_darts.json
"""
from __future__ import annotations

import argparse
import logging
import random
import time
import warnings

import numpy as np
import torch

from nni.nas.oneshot.pytorch.strategy import RandomOneShot

from nni_labelfree.metrics.angle import AnglePolicy, angle_scorer, parameter_snapshot
from nni_labelfree.search_spaces import DartsSpace
from nni_labelfree.search_spaces.darts import random_darts_sample
from nni_labelfree.selection import DARTS_EVOLUTION, ProfilerConstraint, evolve

from bench.common import emit_json

_logger = logging.getLogger(__name__)


def _perturbed_supernet(width: int, cells: int, seed: int) -> tuple[DartsSpace, dict]:
    torch.manual_seed(seed)
    space = DartsSpace(width=width, num_cells=cells, affine=True)
    RandomOneShot().mutate_model(space)
    initial = parameter_snapshot(space)
    with torch.no_grad():
        for p in space.parameters():
            p.mul_(0.9).add_(0.1 * torch.randn_like(p))
    return space, initial


def angle_speed(space: DartsSpace, initial: dict, archs: int, naive: int, seed: int) -> dict:
    """Decomposed (batched and one at a time, as evolution calls it) vs naive angle evaluations per second."""
    start = time.perf_counter()
    scorer = angle_scorer(space, initial, policy=AnglePolicy(**DartsSpace.angle_policy_defaults))
    precompute = time.perf_counter() - start
    rng = random.Random(seed)
    sample = [random_darts_sample(rng) for _ in range(archs)]
    encoded = scorer.encode(sample)
    start = time.perf_counter()
    batched = scorer.angles(encoded)
    batched_time = time.perf_counter() - start
    start = time.perf_counter()
    for arch in sample:
        scorer.angle(arch)
    single_time = time.perf_counter() - start
    start = time.perf_counter()
    naive_angles = [scorer.naive_angle(arch) for arch in sample[:naive]]
    naive_time = time.perf_counter() - start
    return {'precompute_seconds': precompute,
            'decomposed_batched_per_second': archs / batched_time,
            'decomposed_single_per_second': archs / single_time,
            'naive_per_second': naive / naive_time,
            'speedup_single_vs_naive': (archs / single_time) / (naive / naive_time),
            'max_abs_cos_difference': float(np.max(np.abs(np.cos(batched[:naive]) - np.cos(naive_angles))))}


def constrained_evolution(space: DartsSpace, initial: dict, width: int, cells: int, image: int, seed: int) -> dict:
    """Wall time of RLNAS's DARTS evolution under a FLOPs limit (the median of 100 random architectures)."""
    start = time.perf_counter()
    constraint = ProfilerConstraint(DartsSpace(width=width, num_cells=cells, affine=True),
                                    torch.randn(1, 3, image, image), max_flops=1)
    trace = time.perf_counter() - start
    rng = random.Random(seed)
    flops = sorted(constraint.value(random_darts_sample(rng))['flops'] for _ in range(100))
    constraint.limit['flops'] = flops[len(flops) // 2]
    scorer = angle_scorer(space, initial, policy=AnglePolicy(**DartsSpace.angle_policy_defaults))
    start = time.perf_counter()
    result = evolve(scorer.choices, scorer.angle, constraint=constraint, repair=DartsSpace.repair, seed=seed,
                    **DARTS_EVOLUTION)
    wall = time.perf_counter() - start
    legal = all(constraint(arch) for arch, _ in result.ranked)
    return {'profiler_trace_seconds': trace, 'max_flops': constraint.limit['flops'],
            'evolution_seconds': wall, 'num_evaluated': result.num_evaluated,
            'best_angle': result.best_fitness, 'all_results_within_limit': legal, **dict(DARTS_EVOLUTION)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--width', type=int, default=16)
    parser.add_argument('--cells', type=int, default=8)
    parser.add_argument('--image-size', type=int, default=32)
    parser.add_argument('--archs', type=int, default=2000, help='architectures for the decomposed timings')
    parser.add_argument('--naive', type=int, default=50, help='architectures for the naive timing')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    warnings.filterwarnings('ignore')
    torch.set_num_threads(args.threads)
    space, initial = _perturbed_supernet(args.width, args.cells, args.seed)
    result = {'space': f'darts C={args.width} cells={args.cells} affine', 'threads': torch.get_num_threads(),
              'angle': angle_speed(space, initial, args.archs, args.naive, args.seed),
              'evolution': constrained_evolution(space, initial, args.width, args.cells, args.image_size, args.seed)}
    emit_json(result, args.out)


if __name__ == '__main__':
    main()
