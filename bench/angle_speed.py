"""Angle ranking of all 15,625 NAS-Bench-201 cells: decomposed (precompute + vectorised sums) vs naive.

The naive definition concatenates each cell's weight vectors and takes the arccos of their cosine; it is timed on
a random sample of cells and extrapolated to 15,625. Target: decomposed < 1 s on 2 cores including precompute.

    python -m bench.angle_speed --channels 16 --cells 5
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from nni.nas.oneshot.pytorch.strategy import RandomOneShot

from nni_labelfree.metrics.angle import angle_scorer, parameter_snapshot
from nni_labelfree.search_spaces import NasBench201Space

from bench.common import emit_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--channels', type=int, default=16)
    parser.add_argument('--cells', type=int, default=5)
    parser.add_argument('--naive-sample', type=int, default=100)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    warnings.filterwarnings('ignore')
    torch.manual_seed(0)
    space = NasBench201Space(channels=args.channels, cells_per_stage=args.cells)
    RandomOneShot().mutate_model(space)
    initial = parameter_snapshot(space)
    with torch.no_grad():
        for p in space.parameters():
            p.mul_(0.9).add_(0.1 * torch.randn_like(p))
    decomposed = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        scorer = angle_scorer(space, initial)
        precompute = time.perf_counter() - start
        angles = scorer.angles(scorer.all_encodings())
        decomposed.append((precompute, time.perf_counter() - start))
    rows = np.random.default_rng(0).choice(len(angles), args.naive_sample, replace=False)
    encoded = scorer.all_encodings()
    start = time.perf_counter()
    naive = [scorer.naive_angle(scorer.decode(encoded[r])) for r in rows]
    naive_per_cell = (time.perf_counter() - start) / args.naive_sample
    best = min(decomposed, key=lambda t: t[1])
    result = {'space': f'nasbench201 C={args.channels} N={args.cells}', 'cells': int(len(angles)),
              'threads': torch.get_num_threads(),
              'decomposed_seconds_total': best[1], 'decomposed_seconds_precompute': best[0],
              'naive_seconds_per_cell': naive_per_cell, 'naive_seconds_all_extrapolated': naive_per_cell * len(angles),
              'speedup': naive_per_cell * len(angles) / best[1],
              'max_abs_cos_difference': float(np.max(np.abs(np.cos(angles[rows]) - np.cos(naive))))}
    emit_json(result, args.out)


if __name__ == '__main__':
    main()
